"""A foreign publisher of signed and forged events, for
tests/broker/signing.rs: pika's BlockingConnection publishes JSON events,
signed as docs/signing.md describes (HMAC-SHA256) or forged.

Usage: pika_signing.py AMQP_URL EXCHANGE TAG FINGERPRINT KEY_ID SECRET_HEX

Reads one line per message from stdin: `CASE SEQ`, publishes the message of
CASE with body `{TAG: {"sensor": "pika", "value": SEQ}}` (confirmed by the
broker) and prints `ok MESSAGE_ID`. Cases:

- signed: signed with the key, sent now (a receiver holding the key takes it)
- forged: a signature made with a secret that is not the key
- tampered: signed, then the body changed
- unsigned: no signature headers
- unknown_key: signed, under a key id the receiver does not hold
- stale: signed with the key, sent ten minutes ago

An unknown case prints `error ...` and exits with status 2.
"""
import hashlib
import hmac
import json
import struct
import sys
import time

import pika

url, exchange, tag, fingerprint, key_id, secret_hex = sys.argv[1:7]
secret = bytes.fromhex(secret_hex)
ORIGIN = "pika-publisher"
JSON = "application/json"


def signature(secret, fields, body):
    """HMAC-SHA256 over the bytes of docs/signing.md, in hex."""
    signed = bytearray(b"tidings-signature-v1\n")
    for field in fields:
        if field is None:
            signed += b"\xff\xff\xff\xff"
        else:
            data = field.encode()
            signed += struct.pack(">I", len(data)) + data
    signed += struct.pack(">Q", len(body)) + body
    return hmac.new(secret, bytes(signed), hashlib.sha256).hexdigest()


def message(name, seq):
    """(body, message id, headers) of case `name`."""
    body = json.dumps({tag: {"sensor": "pika", "value": seq}}).encode()
    message_id = f"pika-{name}-{seq}"
    sent_at = time.time_ns() // 1000
    if name == "stale":
        sent_at -= 600 * 1_000_000
    sent_at = str(sent_at)
    headers = {
        "x-tidings-tag": tag,
        "x-tidings-fingerprint": fingerprint,
        "x-origin": ORIGIN,
        "x-tidings-sent-at": sent_at,
    }
    if name == "unsigned":
        return body, message_id, headers
    kid = "k-nobody-has" if name == "unknown_key" else key_id
    key = b"not the key, but just as long" if name == "forged" else secret
    fields = [kid, JSON, tag, None, fingerprint, message_id, ORIGIN, sent_at, None, None]
    headers["x-tidings-key-id"] = kid
    headers["x-tidings-signature"] = signature(key, fields, body)
    if name == "tampered":
        body = json.dumps({tag: {"sensor": "pika", "value": 666}}).encode()
    elif name not in ("signed", "forged", "unknown_key", "stale"):
        return None
    return body, message_id, headers


connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
for line in sys.stdin:
    name, seq = line.split()
    built = message(name, int(seq))
    if built is None:
        print(f"error unknown case {name}", flush=True)
        sys.exit(2)
    body, message_id, headers = built
    properties = pika.BasicProperties(content_type=JSON, message_id=message_id, headers=headers)
    channel.basic_publish(exchange=exchange, routing_key="", body=body, properties=properties)
    print(f"ok {message_id}", flush=True)
connection.close()
