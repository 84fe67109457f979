"""Realistic (fake) sensitive values of every supported kind, shared by the redaction tests.

Each entry: kind name → (text to plant, the part of it that must never appear after redaction,
the label expected).
"""

from __future__ import annotations

PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgwMbRvI0MBZhpF\n"
    "q3k9fP2cVw5nA7n0T3lQY8v1mZq2y4Yb2Lh7sLZb9qJ8eW5kP0yN1vX3tR6uE2oA\n"
    "-----END RSA PRIVATE KEY-----"
)

SAMPLES: dict[str, tuple[str, str, str]] = {
    "aws_access_key": ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "secret"),
    "github_token": ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "16C7e42F292c6912E7710c838347Ae178B4a", "secret"),
    "github_pat": (
        "github_pat_11ABCDEFG0123456789abc_0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijKLMNOPQRS",
        "11ABCDEFG0123456789abc_0123456789abcdefghijABCDEFGHIJ",
        "secret",
    ),
    "slack_token": (
        "xoxb-2424242424-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "secret",
    ),
    "slack_webhook": (
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "secret",
    ),
    "openai_key": ("sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "secret"),
    "anthropic_key": (
        "sk-ant-api03-Zq8xY2wV4uT6sR8qP0oN2mL4kJ6iH8gF0eD2cB4aZ6yX8wV0uT2sR4qP6oN8mL0kJ2iH4gF6eD8cB0aA-AAAAAAAA",
        "Zq8xY2wV4uT6sR8qP0oN2mL4kJ6iH8gF0eD2cB4aZ6yX8wV0uT2",
        "secret",
    ),
    "stripe_key": ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjtT1zdp7dc", "secret"),
    "google_api_key": ("AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "secret"),
    "jwt": (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ",
        "secret",
    ),
    "private_key": (PRIVATE_KEY, "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn", "secret"),
    "bearer": ("Authorization: Bearer 9f8e7d6c5b4a3f2e1d0c", "9f8e7d6c5b4a3f2e1d0c", "secret"),
    "basic_auth": ("Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l", "YWxhZGRpbjpvcGVuc2VzYW1l", "secret"),
    "url_password": ("postgres://admin:Tr0ub4dor3xq@db.internal.example.com:5432/prod", "Tr0ub4dor3xq", "secret"),
    "password": ("password=correcthorsebattery", "correcthorsebattery", "secret"),
    "api_key_json": ('{"api_key": "k3y-v4lu3-f0r-t3st"}', "k3y-v4lu3-f0r-t3st", "secret"),
    "email": ("alice.liddell+work@wonderland.example.org", "alice.liddell+work", "email"),
    "phone": ("+44 20 7946 0958", "7946 0958", "phone"),
    "phone_us": ("(415) 555-0132", "555-0132", "phone"),
    "card": ("4539 1488 0343 6467", "4539 1488 0343 6467", "card"),
    "card_compact": ("5500005555555559", "5500005555555559", "card"),
    "iban": ("DE89 3704 0044 0532 0130 00", "3704 0044 0532", "iban"),
    "iban_compact": ("GB82WEST12345698765432", "GB82WEST12345698765432", "iban"),
    "us_ssn": ("536-90-4399", "536-90-4399", "national_id"),
    "br_cpf": ("390.533.447-05", "390.533.447-05", "national_id"),
    "in_aadhaar": ("2341 2341 2346", "2341 2341 2346", "national_id"),
    "es_dni": ("54362315K", "54362315K", "national_id"),
    "it_codice_fiscale": ("RCCMNL83S18D969H", "RCCMNL83S18D969H", "national_id"),
    "ipv4": ("192.168.17.42", "192.168.17.42", "ip"),
    "ipv6": ("2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3::8a2e:370:7334", "ip"),
    "base64_blob": (
        "dGhpcyBpcyBhIHNlY3JldCBibG9iIQ9xK2pLmN4oP7qR",
        "dGhpcyBpcyBhIHNlY3JldCBibG9iIQ9xK2pLmN4oP7qR",
        "high_entropy",
    ),
    "hex_blob": (
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "9f86d081884c7d659a2feaa0c55ad015",
        "high_entropy",
    ),
}
