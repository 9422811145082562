#!/usr/bin/env bash
# Callgrind profiles of the publisher and the consumer process of one bench
# row, at two event counts (their difference is the marginal cost per
# event). See docs/perf/FINDINGS.md.
#
#   CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --example bench
#   docs/perf/profile.sh OUT_DIR ROW [SMALL] [LARGE]   # ROW: naive, tuned or tidings
#   (SIZE=BYTES for another event size than 100 B; MODE=--forget for the
#   fire-and-forget scenario)
#   python3 docs/perf/cg_compare.py OUT_DIR/ROW-SMALL-consumer.out SMALL OUT_DIR/ROW-LARGE-consumer.out LARGE
set -euo pipefail
out=${1:?OUT_DIR}
row=${2:?ROW}
small=${3:-2000}
large=${4:-12000}
bin=${BENCH_BIN:-target/release/examples/bench}
mkdir -p "$out"
for n in "$small" "$large"; do
    TIDINGS_BENCH_CONSUMER_WRAPPER="valgrind -q --tool=callgrind --callgrind-out-file=$out/$row-$n-consumer.out" \
        valgrind -q --tool=callgrind --callgrind-out-file="$out/$row-$n-publisher.out" \
        "$bin" "${MODE:---confirmed}" --size "${SIZE:-100}" --only "$row" --events "$n"
done
