"""Publish and consume tidings events from Python, with pika.

tidings is a Rust library that sends typed events through a RabbitMQ
exchange. This module speaks its JSON wire format (WIRE.md at the root of
the tidings repository describes every header and byte): a Rust bus whose
URL has `?codec=json` reads what `publish` sends, and `decode` reads what it
publishes. Any bus reads JSON, whatever codec it sends with.

    import pika, tidings_pika

    contract = tidings_pika.load_contract("events.lock")   # Contract::write
    channel = pika.BlockingConnection(pika.URLParameters(url)).channel()
    channel.confirm_delivery()
    tidings_pika.publish(channel, "shop", "shop.order_placed",
                         {"id": 7, "coupon": None}, contract=contract)

    for event in tidings_pika.consume(channel, queue, count=1):
        print(event.tag, event.payload, event.message_id, event.origin)

The schema fingerprint a receiver compares with its own is computed from the
event's schema in a contract file, exactly as tidings computes it
(`fingerprint`). Needs Python 3.11 and pika; nothing else.

Compression: `publish(..., compression="gzip")` gzips the body and sets the
`content-encoding` (every bus reads gzip); `decode` reads gzip bodies, never
inflating one past `max_size` (default 4 MiB, a bus's default limit). zstd
and lz4 bodies (from a bus built with those features) raise `WireError`:
Python's standard library has neither.

As a program, for scripts and tests (see `python tidings_pika.py --help`):

    tidings_pika.py publish URL EXCHANGE --contract FILE   < events.jsonl
    tidings_pika.py consume URL EXCHANGE --count N [--queue Q] [--bind KEY]
    tidings_pika.py fingerprint --contract FILE TAG [--version N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import pika

JSON_CONTENT_TYPE = "application/json"
TAG_HEADER = "x-tidings-tag"
FINGERPRINT_HEADER = "x-tidings-fingerprint"
VERSION_HEADER = "x-tidings-version"
ORIGIN_HEADER = "x-origin"
CORRELATION_HEADER = "x-correlation-id"
CAUSATION_HEADER = "x-causation-id"
SENT_AT_HEADER = "x-tidings-sent-at"
ATTEMPT_HEADER = "x-tidings-attempt"

#: The largest body `decode` reads, also once decompressed: a bus's default.
MAX_SIZE = 4 * 1024 * 1024

#: This process's instance id: the `x-origin` of what it publishes, and the
#: prefix of its message ids.
ORIGIN = f"python-{uuid.uuid4()}"
_sequence = itertools.count()


class WireError(ValueError):
    """A message that is not a valid tidings JSON event."""


# ---------------------------------------------------------------- fingerprint


def fnv1a_64(data: bytes) -> int:
    """64-bit FNV-1a of `data`."""
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


_PRIMITIVES = {
    "unit", "bool", "i8", "i16", "i32", "i64", "i128", "u8", "u16", "u32",
    "u64", "u128", "f32", "f64", "char", "bytes",
}


def canonical(schema: dict) -> str:
    """The text tidings hashes into the fingerprint of a traced schema:
    `tag=<tag>;version=<version>;<root format>`, where every named type is
    written out where it is used (WIRE.md, "The fingerprint")."""
    root = schema.get("root")
    if root is None:
        raise WireError(f"the schema of {schema.get('tag')!r} is not traced; use its fingerprint as given")
    types = schema.get("types", {})
    return f"tag={schema['tag']};version={schema['version']};{_format(root, types, [])}"


def _format(fmt: Any, types: dict, stack: list[str]) -> str:
    if isinstance(fmt, str):
        if fmt == "str":
            return "string"
        if fmt in _PRIMITIVES:
            return fmt
        raise WireError(f"unknown format {fmt!r}")
    ((kind, inner),) = fmt.items()
    if kind == "type_name":
        if inner in stack:  # a type that contains itself: how many levels up
            return f"^{len(stack) - stack.index(inner)}"
        if inner not in types:
            return f"?{inner}"
        stack.append(inner)
        text = _container(types[inner], types, stack)
        stack.pop()
        return text
    if kind in ("option", "seq"):
        return f"{kind}({_format(inner, types, stack)})"
    if kind == "map":
        return f"map({_format(inner['key'], types, stack)},{_format(inner['value'], types, stack)})"
    if kind == "tuple":
        return f"tuple({_list(inner, types, stack)})"
    if kind == "tuple_array":
        return f"array({_format(inner['content'], types, stack)};{inner['size']})"
    raise WireError(f"unknown format {kind!r}")


def _list(items: list, types: dict, stack: list[str]) -> str:
    return ",".join(_format(item, types, stack) for item in items)


def _fields(fields: list, types: dict, stack: list[str]) -> str:
    return "{" + ",".join(f"{f['name']}:{_format(f['value'], types, stack)}" for f in fields) + "}"


def _container(container: Any, types: dict, stack: list[str]) -> str:
    if container == "unit_struct":
        return "unit"
    ((kind, inner),) = container.items()
    if kind == "new_type_struct":
        return f"newtype({_format(inner, types, stack)})"
    if kind == "tuple_struct":
        return f"tuple({_list(inner, types, stack)})"
    if kind == "struct":
        return "struct" + _fields(inner, types, stack)
    if kind == "enum":
        variants = []
        for index in sorted(inner, key=int):
            variant = inner[index]
            value = variant["value"]
            text = f"{int(index)}:{variant['name']}"
            if value == "unit":
                pass
            elif "new_type" in value:
                text += f"({_format(value['new_type'], types, stack)})"
            elif "tuple" in value:
                text += f"({_list(value['tuple'], types, stack)})"
            elif "struct" in value:
                text += _fields(value["struct"], types, stack)
            else:
                raise WireError(f"unknown variant format {value!r}")
            variants.append(text)
        return "enum{" + ",".join(variants) + "}"
    raise WireError(f"unknown container format {kind!r}")


def fingerprint(schema: dict) -> str:
    """The fingerprint of an event's schema (an entry of a contract's
    `events`), as 16 lowercase hex digits. An untraced schema (no `root`)
    keeps the fingerprint it was written with."""
    if schema.get("root") is None:
        return schema["fingerprint"]
    return f"{fnv1a_64(canonical(schema).encode('utf-8')):016x}"


def load_contract(path: str) -> dict[tuple[str, int], dict]:
    """The schemas of a contract file written by tidings' `Contract::write`
    (or `Contract::check_lock_file`), by (tag, version)."""
    with open(path, encoding="utf-8") as file:
        contract = json.load(file)
    if contract.get("tidings_contract") != 1:
        raise WireError(f"{path} is not a tidings contract (format 1)")
    return {(s["tag"], s["version"]): s for s in contract["events"]}


def fingerprint_of(contract: dict[tuple[str, int], dict], tag: str, version: int = 1) -> str:
    """The fingerprint of event `tag` at `version` in a loaded contract."""
    try:
        return fingerprint(contract[(tag, version)])
    except KeyError:
        raise WireError(f"the contract has no event {tag!r} version {version}") from None


# ---------------------------------------------------------------- publishing


def wire_name(tag: str, version: int = 1) -> str:
    """The key the JSON body holds the event under: the tag, or
    `<tag>@v<N>` for versions after 1."""
    return tag if version == 1 else f"{tag}@v{version}"


def encode(tag: str, payload: Any, version: int = 1) -> bytes:
    """The JSON body of an event: `{"<wire name>": payload}`."""
    # NaN and infinities are not JSON: tidings could not read them.
    return json.dumps({wire_name(tag, version): payload}, ensure_ascii=False,
                      allow_nan=False, separators=(",", ":")).encode("utf-8")


def properties(tag: str, fingerprint: str, version: int = 1, *, message_id: str | None = None,
               correlation_id: str | None = None, causation_id: str | None = None,
               headers: dict[str, str] | None = None) -> pika.BasicProperties:
    """The AMQP properties of an event, as a tidings bus sends them."""
    all_headers = dict(headers or {})
    all_headers.update({
        TAG_HEADER: tag,
        FINGERPRINT_HEADER: fingerprint,
        ORIGIN_HEADER: ORIGIN,
        SENT_AT_HEADER: str(time.time_ns() // 1000),
    })
    if version != 1:
        all_headers[VERSION_HEADER] = str(version)
    if correlation_id is not None:
        all_headers[CORRELATION_HEADER] = correlation_id
    if causation_id is not None:
        all_headers[CAUSATION_HEADER] = causation_id
    return pika.BasicProperties(
        content_type=JSON_CONTENT_TYPE,
        delivery_mode=2,
        message_id=message_id or f"{ORIGIN}-{next(_sequence)}",
        timestamp=int(time.time()),
        app_id="python",
        headers=all_headers,
    )


def publish(channel, exchange: str, tag: str, payload: Any, *, version: int = 1,
            fingerprint: str | None = None, contract: dict | None = None,
            routing_key: str | None = None, compression: str | None = None,
            **options) -> str:
    """Publishes one event; returns its message id.

    The fingerprint is given, or computed from `contract` (`load_contract`).
    The routing key is the tag unless given (a fanout exchange ignores it;
    use the event's `#[event(routing_key = ..)]` if it has one).
    `compression="gzip"` gzips the body (`content-encoding: gzip`). `options`:
    `message_id`, `correlation_id`, `causation_id`, `headers`. With
    `channel.confirm_delivery()` on, returns once the broker has the event.
    """
    if fingerprint is None:
        if contract is None:
            raise WireError("give the event's fingerprint or a contract to compute it from")
        fingerprint = fingerprint_of(contract, tag, version)
    props = properties(tag, fingerprint, version, **options)
    body = encode(tag, payload, version)
    if compression == "gzip":
        body = _gzip(body)
        props.content_encoding = "gzip"
    elif compression is not None:
        raise WireError(f"compression {compression!r}: this module writes gzip only")
    channel.basic_publish(exchange, tag if routing_key is None else routing_key, body, props)
    return props.message_id


def _gzip(body: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    return packer.compress(body) + packer.flush()


def decompress(body: bytes, encoding: str | None, max_size: int = MAX_SIZE) -> bytes:
    """A body as its `content-encoding` says, never inflated past
    `max_size` bytes (a bomb raises `WireError` having used that much)."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise WireError(f"content-encoding {encoding!r} is not one this module reads (gzip)")
    unpacker = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        plain = unpacker.decompress(body, max_size + 1)
    except zlib.error as e:
        raise WireError(f"the gzip body does not decompress: {e}") from None
    if len(plain) > max_size:
        raise WireError(f"the gzip body decompresses to more than {max_size} bytes")
    return plain


# ---------------------------------------------------------------- consuming


@dataclass
class Received:
    """A tidings event as received: its type, content and context."""

    tag: str
    version: int
    payload: Any
    fingerprint: str | None
    message_id: str | None
    origin: str | None
    routing_key: str
    timestamp: int | None
    correlation_id: str | None
    causation_id: str | None
    attempt: int
    #: Every header, tidings' and the application's.
    headers: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict:
        """The event as a JSON-ready dict (without the raw headers)."""
        return {k: v for k, v in self.__dict__.items() if k != "headers"}


def _text(headers: dict, name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise WireError(f"{name} header is not a string: {value!r}")
    return value


def decode(props: pika.BasicProperties, body: bytes, routing_key: str = "",
           max_size: int = MAX_SIZE) -> Received:
    """Reads a tidings JSON event, gzip-compressed or not; raises
    `WireError` when it is not one."""
    content_type = (props.content_type or "").split(";")[0].strip().lower()
    if content_type != JSON_CONTENT_TYPE:
        raise WireError(f"content-type {props.content_type!r} is not {JSON_CONTENT_TYPE} "
                        "(bincode events need a bus with ?codec=json to be read here)")
    if len(body) > max_size:
        raise WireError(f"the body of {len(body)} bytes is over {max_size}")
    body = decompress(body, props.content_encoding, max_size)
    headers = props.headers or {}
    tag = _text(headers, TAG_HEADER)
    if tag is None:
        raise WireError(f"no {TAG_HEADER} header")
    version_text = _text(headers, VERSION_HEADER) or "1"
    if not version_text.isdigit() or int(version_text) < 1:
        raise WireError(f"{VERSION_HEADER} header {version_text!r} is not a version")
    version = int(version_text)
    try:
        event = json.loads(body)
    except ValueError as e:
        raise WireError(f"the body is not JSON: {e}") from None
    if not isinstance(event, dict) or len(event) != 1:
        raise WireError("the body is not one event {\"<tag>\": {...}}")
    ((name, payload),) = event.items()
    if name != wire_name(tag, version):
        raise WireError(f"the body holds {name!r} but the headers say {wire_name(tag, version)!r}")
    attempt = _text(headers, ATTEMPT_HEADER)
    return Received(
        tag=tag,
        version=version,
        payload=payload,
        fingerprint=_text(headers, FINGERPRINT_HEADER),
        message_id=props.message_id,
        origin=_text(headers, ORIGIN_HEADER),
        routing_key=_text(headers, "x-tidings-routing-key") or routing_key,
        timestamp=props.timestamp,
        correlation_id=_text(headers, CORRELATION_HEADER) or props.message_id,
        causation_id=_text(headers, CAUSATION_HEADER),
        attempt=int(attempt) if attempt and attempt.isdigit() else 1,
        headers=dict(headers),
    )


def consume(channel, queue: str, count: int, timeout: float = 30.0) -> Iterator[Received | WireError]:
    """Yields the next `count` messages of `queue` decoded, acknowledging
    each event and rejecting (without requeueing) what is not one, which is
    yielded as its `WireError`. Raises `TimeoutError` when nothing comes for
    `timeout` seconds."""
    seen = 0
    for method, props, body in channel.consume(queue, inactivity_timeout=timeout):
        if method is None:
            channel.cancel()
            raise TimeoutError(f"no message in {queue!r} for {timeout} s")
        try:
            event = decode(props, body, method.routing_key)
        except WireError as e:
            channel.basic_reject(method.delivery_tag, requeue=False)
            yield e
        else:
            channel.basic_ack(method.delivery_tag)
            yield event
        seen += 1
        if seen >= count:
            channel.cancel()
            return


# ---------------------------------------------------------------- program


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tidings_pika.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pub = commands.add_parser("publish", help="publish the JSON lines of stdin, each "
                              '{"tag", "payload", and optionally "version", "message_id", '
                              '"routing_key", "fingerprint", "correlation_id", "causation_id", "headers", '
                              '"compression" ("gzip")}; '
                              'prints {"message_id", "fingerprint"} per event once confirmed')
    pub.add_argument("url")
    pub.add_argument("exchange")
    pub.add_argument("--contract", help="contract file to compute fingerprints from")
    con = commands.add_parser("consume", help="bind a queue to the exchange, print `ready`, "
                              "then print COUNT events (or errors) as JSON lines")
    con.add_argument("url")
    con.add_argument("exchange")
    con.add_argument("--count", type=int, required=True)
    con.add_argument("--queue", default="", help="name of the exclusive queue (default: the broker's)")
    con.add_argument("--bind", action="append", help="routing key or pattern (default: #)")
    con.add_argument("--timeout", type=float, default=30.0)
    fp = commands.add_parser("fingerprint", help="print an event's fingerprint from a contract")
    fp.add_argument("tag")
    fp.add_argument("--contract", required=True)
    fp.add_argument("--version", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command == "fingerprint":
        print(fingerprint_of(load_contract(args.contract), args.tag, args.version))
        return 0
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    try:
        if args.command == "publish":
            contract = load_contract(args.contract) if args.contract else None
            channel.confirm_delivery()
            for line in sys.stdin:
                if not line.strip():
                    continue
                e = json.loads(line)
                version = e.get("version", 1)
                fingerprint = e.get("fingerprint")
                if fingerprint is None and contract is not None:
                    fingerprint = fingerprint_of(contract, e["tag"], version)
                options = {k: e[k] for k in ("message_id", "routing_key", "correlation_id",
                                              "causation_id", "headers", "compression") if k in e}
                message_id = publish(channel, args.exchange, e["tag"], e["payload"], version=version,
                                     fingerprint=fingerprint, **options)
                print(json.dumps({"message_id": message_id, "fingerprint": fingerprint}), flush=True)
        else:
            queue = channel.queue_declare(args.queue, exclusive=True).method.queue
            for key in args.bind or ["#"]:
                channel.queue_bind(queue, args.exchange, key)
            channel.basic_qos(prefetch_count=max(1, min(args.count, 256)))
            print("ready", flush=True)
            for event in consume(channel, queue, args.count, args.timeout):
                line = {"error": str(event)} if isinstance(event, WireError) else event.as_json()
                print(json.dumps(line, ensure_ascii=False), flush=True)
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
