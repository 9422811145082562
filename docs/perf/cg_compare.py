#!/usr/bin/env python3
"""Marginal instructions per event from callgrind profiles of two runs of
one bench row that differ only in the number of events.

    cg_compare.py SMALL.out SMALL_EVENTS LARGE.out LARGE_EVENTS [--top N]
    cg_compare.py - 0 ONE.out EVENTS [--top N]   # one profile, set-up included

Prints the total marginal instructions per event (LARGE - SMALL over
LARGE_EVENTS - SMALL_EVENTS: connecting, declaring and start-up cancel
out), the self cost per event grouped into causes (by the function's
symbol), and the top functions by self and by inclusive cost per event.
The bench's own polling (`report` lines, `wait_for_all`) is listed as its
own cause and left out of the "library" total.

Needs `callgrind_annotate` (valgrind) on the PATH.
"""

import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S.*?)(?:\s+\[[^\]]*\])?\s*$")

# First match wins: order matters (tidings' own modules before the crates
# they call into).
CAUSES = [
    ("bench harness (report polling, tally)",
     r"bench::consumer::Tally::report|bench::procfs|bench::wait_for_all|ConsumerProcess::report|"
     r"bench::consumer::stdin_lines|read_to_string|std::fs::|bench::consumer::ConsumerProcess"),
    ("span/tracing", r"tracing|trace_context|telemetry|valuable"),
    ("hashing (SipHash: tidings dedup, registry, counters; lapin channel maps)", r"tidings::bus::dedup|siphash|SipHasher|core::hash|std::hash|hashbrown|ahash|foldhash"),
    ("context/headers building", r"tidings::bus::context|tidings::headers|tidings::bus::text|header_str|"
     r"tidings::amqp::delivery|event_headers|AmqpReceived|visit_table|headers_of"),
    ("decode/encode (typetag, serde, bincode)",
     r"typetag|erased_serde|bincode|serde|tidings::codec|tidings::bus::decode|tidings::event|"
     r"tidings::schema|inventory"),
    ("ack batching / settlement", r"AckBatch|ack_through|ack_multiple|Delivery::ack|settled|tidings::bus::settle"),
    ("outbox bookkeeping", r"tidings::amqp::outbox|tidings::amqp::producer|tidings::amqp::header_frame|"
     r"PublishCounters|tidings::bus::stats|Counters"),
    ("tidings dispatch/listener/publish (other)", r"tidings::|bench::"),
    ("lapin itself (frames, parsing, channels)",
     r"lapin|amq_protocol|cookie_factory|nom::|async_rs|executor_trait|reactor_trait|flume|async_global|"
     r"tcp_stream|pinky_swear|async_io|polling::|parking::|event_listener|async_lock"),
    ("task hops/wakeups (tokio runtime, sync)",
     r"tokio|mio::|futures|parking_lot|std::sync|std::thread|crossbeam|core::task|Waker|"
     r"epoll|futex|syscall|__libc_(recv|send|read|write)|^(recv|send|read|write|__GI___(recv|send|read|write|poll))|pthread|sched_yield|clock_gettime|__vdso"),
    ("allocation (malloc/free/realloc)",
     r"malloc|free|realloc|calloc|__rust_(alloc|dealloc|realloc)|__rdl_|alloc::raw_vec|alloc::alloc|"
     r"_int_|tcache|unlink_chunk|drop_in_place|alloc::sync::Arc|core::ptr"),
    ("memcpy/memmove/memset", r"mem(cpy|move|set|cmp)|__mem|bcmp|strlen"),
]
CAUSES = [(name, re.compile(rx)) for name, rx in CAUSES]


def cause_of(function):
    for name, rx in CAUSES:
        if rx.search(function):
            return name
    return "other (libc, std)"


def costs(path, inclusive):
    out = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
         "--threshold=100", "--show-percs=no", "--auto=no", path],
        check=True, capture_output=True, text=True).stdout
    total = None
    table = {}
    started = False
    for line in out.splitlines():
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
            continue
        if line.startswith("Ir") and ("file:function" in line):
            started = True
            continue
        if not started or line.startswith("-"):
            continue
        if not line.strip():
            if table:
                break
            continue
        m = LINE.match(line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        name = m.group(2)
        # "file:function": drop the file part.
        if ":" in name and not name.startswith("0x"):
            file, _, fn = name.partition(":")
            if "/" in file or file.endswith(".rs") or file.endswith(".c") or file == "???":
                name = fn
        table[name] = table.get(name, 0) + ir
    return total, table


def pop_top(args, default):
    """Takes `--top N` out of `args`; N, or `default`."""
    if "--top" not in args:
        return default
    i = args.index("--top")
    top = int(args[i + 1])
    del args[i:i + 2]
    return top


def main():
    args = sys.argv[1:]
    top = pop_top(args, 25)
    small, n_small, large, n_large = args[0], int(args[1]), args[2], int(args[3])
    events = n_large - n_small
    if small == "-":
        # One profile only: everything over LARGE_EVENTS (set-up included).
        t_small, self_small, inc_small = 0, {}, {}
    else:
        t_small, self_small = costs(small, False)
        _, inc_small = costs(small, True)
    t_large, self_large = costs(large, False)
    _, inc_large = costs(large, True)

    def delta(a, b):
        keys = set(a) | set(b)
        return {k: (b.get(k, 0) - a.get(k, 0)) / events for k in keys}

    self_d = delta(self_small, self_large)
    inc_d = delta(inc_small, inc_large)
    total = (t_large - t_small) / events
    by_cause = {}
    for fn, ir in self_d.items():
        c = cause_of(fn)
        by_cause[c] = by_cause.get(c, 0) + ir
    harness = by_cause.get(CAUSES[0][0], 0)
    print(f"total marginal instructions/event: {total:,.0f}")
    print(f"without the bench harness:         {total - harness:,.0f}")
    print()
    print("self cost per event by cause:")
    for c, ir in sorted(by_cause.items(), key=lambda kv: -kv[1]):
        print(f"  {ir:>10,.0f}  {100 * ir / total:5.1f}%  {c}")
    print()
    print(f"top {top} functions, self instructions/event:")
    for fn, ir in sorted(self_d.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ir:>10,.0f}  [{cause_of(fn)[:12]}] {fn[:150]}")
    print()
    print(f"top {2 * top} functions, inclusive instructions/event:")
    for fn, ir in sorted(inc_d.items(), key=lambda kv: -kv[1])[:2 * top]:
        print(f"  {ir:>10,.0f}  {fn[:160]}")


if __name__ == "__main__":
    main()
