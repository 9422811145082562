"""A foreign publisher of bad input, for tests/bad_input_matrix.rs: pika's
BlockingConnection publishes each bad message a tidings bus must reject,
each followed by a good JSON event.

Usage: pika_bad_input.py AMQP_URL EXCHANGE TAG FINGERPRINT BINCODE_HEX BOMB_HEX MAX_SIZE

TAG and FINGERPRINT are the event type's wire tag and schema fingerprint
(16 hex digits); BINCODE_HEX is a valid bincode encoding of one such event
(truncated here), BOMB_HEX a bincode body whose string length prefix claims
2^40 bytes; MAX_SIZE is the receiving bus's maximum message size.

Reads one line per case from stdin: `CASE SEQ`. Publishes the bad message of
CASE (message id `pika-bad-SEQ-CASE`), then a good event
`{TAG: {"sensor": "pika", "value": SEQ}}` (message id `pika-good-SEQ`), both
confirmed by the broker, and prints `ok BAD_MESSAGE_ID`. After every other
case (odd SEQ) the good event is gzip-compressed (`content-encoding: gzip`),
as a Python publisher saving bandwidth would send it. An unknown case
prints `error ...` and exits with status 2.
"""
import gzip
import json
import sys

import pika

url, exchange, tag, fingerprint, bincode_hex, bomb_hex, max_size = sys.argv[1:8]
valid_bincode = bytes.fromhex(bincode_hex)
bomb = bytes.fromhex(bomb_hex)
max_size = int(max_size)

BINCODE = "application/x-bincode"
JSON = "application/json"
good_headers = {"x-tidings-tag": tag, "x-tidings-fingerprint": fingerprint}


def case(name):
    """(body, content type or None, headers) of the bad message `name`."""
    if name == "garbage":
        return b"\xff" * 9, BINCODE, good_headers
    if name == "empty":
        return b"", BINCODE, good_headers
    if name == "truncated_bincode":
        return valid_bincode[: len(valid_bincode) - 3], BINCODE, good_headers
    if name == "length_bomb":
        return bomb, BINCODE, good_headers
    if name == "unknown_content_type":
        return b"(dp0\n.", "application/python-pickle", good_headers
    if name == "no_content_type":
        return json.dumps({tag: {"sensor": "x", "value": 1}}).encode(), None, good_headers
    if name == "missing_tag":
        return valid_bincode, BINCODE, {"x-tidings-fingerprint": fingerprint}
    if name == "unknown_tag":
        body = json.dumps({"nobody.knows": {"sensor": "x", "value": 1}}).encode()
        return body, JSON, {"x-tidings-tag": "nobody.knows", "x-tidings-fingerprint": fingerprint}
    if name == "unknown_schema":
        return valid_bincode, BINCODE, {"x-tidings-tag": tag, "x-tidings-fingerprint": "0123456789abcdef"}
    if name == "too_large":
        body = json.dumps({tag: {"sensor": "x" * (2 * max_size), "value": 1}}).encode()
        return body, JSON, good_headers
    if name == "json_wrong_types":
        return json.dumps({tag: {"sensor": 5, "value": "x"}}).encode(), JSON, good_headers
    if name == "tag_header_integer":
        return valid_bincode, BINCODE, {"x-tidings-tag": 7, "x-tidings-fingerprint": fingerprint}
    if name == "fingerprint_header_integer":
        return valid_bincode, BINCODE, {"x-tidings-tag": tag, "x-tidings-fingerprint": 7}
    if name == "decompression_bomb":
        # About 1 KB on the wire, 256 times the maximum size inflated.
        return gzip.compress(b"\0" * (256 * max_size)), BINCODE, good_headers
    if name == "unknown_content_encoding":
        return valid_bincode, BINCODE, good_headers
    if name == "corrupt_gzip":
        return b"\x1f\x8b\x08\x00\xff\xff\xff", BINCODE, good_headers
    return None


#: The content-encoding of the bad message of a case, if it has one.
ENCODINGS = {"decompression_bomb": "gzip", "corrupt_gzip": "gzip", "unknown_content_encoding": "br"}


connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()  # each basic_publish returns after the broker's ack


def publish(body, content_type, headers, message_id, encoding=None):
    properties = pika.BasicProperties(
        content_type=content_type, content_encoding=encoding, headers=headers,
        message_id=message_id
    )
    channel.basic_publish(exchange, "", body, properties)


for line in sys.stdin:
    if not line.strip():
        continue
    name, seq = line.split()
    bad = case(name)
    if bad is None:
        print(f"error unknown case {name!r}", flush=True)
        sys.exit(2)
    body, content_type, headers = bad
    bad_id = f"pika-bad-{seq}-{name}"
    publish(body, content_type, headers, bad_id, ENCODINGS.get(name))
    good = json.dumps({tag: {"sensor": "pika", "value": int(seq)}}).encode()
    if int(seq) % 2 == 1:
        publish(gzip.compress(good), JSON, good_headers, f"pika-good-{seq}", "gzip")
    else:
        publish(good, JSON, good_headers, f"pika-good-{seq}")
    print(f"ok {bad_id}", flush=True)

connection.close()
