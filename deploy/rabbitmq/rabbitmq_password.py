#!/usr/bin/env python3
"""RabbitMQ password hashes for definitions.json (rabbit_password_hashing_sha256).

RabbitMQ's default hashing: 4 random salt bytes, then
base64(salt + SHA-256(salt + UTF-8 password)). A definitions file carries the hash in
`password_hash` with `"hashing_algorithm": "rabbit_password_hashing_sha256"`.

    python3 deploy/rabbitmq/rabbitmq_password.py 'new password'        # prints a hash
    python3 deploy/rabbitmq/rabbitmq_password.py --check HASH 'password'  # exit 0 if it matches

Only the Python standard library is used.
"""

import base64
import hashlib
import os
import sys


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def check_password(password_hash: str, password: str) -> bool:
    raw = base64.b64decode(password_hash)
    return len(raw) == 36 and hash_password(password, raw[:4]) == password_hash


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        print(hash_password(argv[1]))
        return 0
    if len(argv) == 4 and argv[1] == "--check":
        ok = check_password(argv[2], argv[3])
        print("matches" if ok else "does not match")
        return 0 if ok else 1
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
