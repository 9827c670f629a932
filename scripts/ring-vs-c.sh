#!/usr/bin/env bash
# ring-vs-c.sh: the Rust ring (hvsock-shm's ring_peers example) against the C
# baseline's minimal ring (shared/baseline/peers.c), same geometry, same
# arguments, run alternately on this machine; prints the median GB/s of each
# and the ratio Rust/C. Owns nothing but this comparison.
#
# Usage: scripts/ring-vs-c.sh [-n RUNS] [-t TOTAL_MIB] [-m ring|ringb] [-c PEERS_C]
#   -n RUNS       runs of each program per geometry (default 5, or $RUNS)
#   -t TOTAL_MIB  MiB moved per run (default 8192, or $TOTAL_MIB); pick it so
#                 that a run takes about a second
#   -m MODE       ring = both ends spin (default), ringb = both block on eventfds
#   -c PEERS_C    path of peers.c (default: shared/baseline/peers.c beside the
#                 repository, or $PEERS_C)
#   -w SECONDS    before each run, wait up to this long for the other
#                 processes of the machine to use under 5% of its CPUs
#                 (default 120, or $QUIET_WAIT; 0 = never wait): spinning
#                 ends that share a CPU with a compiler measure the compiler
# A run whose two processes got less than 1.8 CPUs on average (user + system
# time over wall time: in spinning mode both ends should have a CPU each all
# along) was disturbed; it is retried up to 4 times, then kept and counted.
# Geometries (data KiB / payload bytes): 20/4088 (the seed), 256/16384, 256/4088.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-5}
total=${TOTAL_MIB:-8192}
mode=${MODE:-ring}
peers_c=${PEERS_C:-../shared/baseline/peers.c}
quiet_wait=${QUIET_WAIT:-120}
while getopts "n:t:m:c:w:h" opt; do
    case $opt in
        n) runs=$OPTARG ;;
        t) total=$OPTARG ;;
        m) mode=$OPTARG ;;
        c) peers_c=$OPTARG ;;
        w) quiet_wait=$OPTARG ;;
        *) sed -n '2,20p' "$0" >&2; exit 2 ;;
    esac
done
case $mode in ring | ringb) ;; *) echo "mode must be ring or ringb" >&2; exit 2 ;; esac
[ -f "$peers_c" ] || { echo "peers.c not found at $peers_c (use -c)" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -O2 -o "$tmp/peers" "$peers_c"
cargo build --release --quiet --example ring_peers -p hvsock-shm
rust="${CARGO_TARGET_DIR:-target}/release/examples/ring_peers"

# Runs a program; prints its GB/s (from its "...: X.XX GB/s" line) and the
# CPUs its processes used on average.
run() {
    local t
    t=$( { TIMEFORMAT='%R %U %S'; time "$@" >"$tmp/out" 2>"$tmp/err"; } 2>&1 ) || {
        cat "$tmp/err" >&2
        exit 1
    }
    awk -v t="$t" '/GB\/s$/ { split(t, a, " "); printf "%s %.2f\n", $(NF - 1), (a[2] + a[3]) / a[1] }' "$tmp/out"
}
disturbed=0
# Like run, retrying a run that got too little CPU (spinning mode only: a
# blocking run sleeps by design).
measure() {
    local result attempt
    for ((attempt = 1; attempt <= 5; attempt++)); do
        wait_quiet
        result=$(run "$@")
        if [ "$mode" != ring ] || awk -v s="${result#* }" 'BEGIN { exit !(s >= 1.8) }'; then
            echo "$result"
            return
        fi
    done
    disturbed=$((disturbed + 1))
    echo "$result"
}
# Busy share of all CPUs over half a second, in percent (from /proc/stat).
busy() {
    local a b
    read -r -a a < <(head -1 /proc/stat)
    sleep 0.5
    read -r -a b < <(head -1 /proc/stat)
    local idle=$(((b[4] + b[5]) - (a[4] + a[5]))) total=0 i
    for ((i = 1; i < ${#b[@]}; i++)); do total=$((total + b[i] - a[i])); done
    echo $((total > 0 ? 100 - 100 * idle / total : 0))
}
waited_out=0
wait_quiet() {
    ((quiet_wait > 0)) || return 0
    local deadline=$((SECONDS + quiet_wait))
    while (($(busy) >= 5)); do
        if ((SECONDS >= deadline)); then
            waited_out=$((waited_out + 1))
            return 0
        fi
        sleep 1
    done
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "mode=$mode runs=$runs total=${total}MiB nproc=$(nproc) load: $(cut -d' ' -f1-3 /proc/loadavg)"
rows=()
for geometry in "20 4088" "256 16384" "256 4088"; do
    set -- $geometry
    : >"$tmp/c" && : >"$tmp/rust" && : >"$tmp/pairs"
    for ((i = 1; i <= runs; i++)); do
        read -r c c_cpus < <(measure "$tmp/peers" "$mode" "$1" "$2" "$total")
        read -r r r_cpus < <(measure "$rust" "$mode" "$1" "$2" "$total")
        echo "  data=${1}KiB payload=$2 run $i: C $c GB/s ($c_cpus CPUs), Rust $r GB/s ($r_cpus CPUs)"
        echo "$c" >>"$tmp/c"
        echo "$r" >>"$tmp/rust"
        awk -v c="$c" -v r="$r" 'BEGIN { printf "%.4f\n", (c > 0 ? r / c : 0) }' >>"$tmp/pairs"
    done
    mc=$(median <"$tmp/c")
    mr=$(median <"$tmp/rust")
    mp=$(median <"$tmp/pairs")
    rows+=("$(awk -v d="$1" -v p="$2" -v c="$mc" -v r="$mr" -v q="$mp" \
        'BEGIN { printf "| %4s KiB | %5s B | %6.2f | %6.2f | %5.2f | %5.2f |", d, p, c, r, (c > 0 ? r / c : 0), q }')")
done
echo
# Rust/C is the ratio of the medians; "paired" is the median of the ratios of
# back-to-back runs, which a slow drift of the machine's speed disturbs less.
echo "| data | payload | C GB/s (median) | Rust GB/s (median) | Rust/C | Rust/C paired |"
echo "|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
if ((disturbed > 0)); then
    echo "warning: $disturbed runs kept after 5 disturbed attempts (under 1.8 CPUs)"
fi
if ((waited_out > 0)); then
    echo "warning: $waited_out runs started while other processes kept the CPUs busy"
fi
