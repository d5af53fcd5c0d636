#!/usr/bin/env bash
# The live view in a real browser: headless Chromium (Debian's package, installed here when
# missing) loads the page of a training run, follows its server-sent events while the network
# trains, and must draw a chart that gains points, with no script error; then `convnets serve`
# shows the finished run to a browser that connects after the training. Writes a screenshot to
# $SCREENSHOT when set. Expects target/release/convnets (built by `cargo test --release`).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release/convnets
if ! command -v chromium > /dev/null; then
    echo "live_view: installing chromium (Debian package)" >&2
    apt-get update -qq > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
fi
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2> /dev/null || true; rm -rf "$tmp"' EXIT
fail() { echo "live_view: FAILED: $*" >&2; exit 1; }

# dump URL: the page's DOM after it stopped listening (the URL says after how many updates),
# its console messages in $tmp/console.txt.
dump() {
    timeout 60 chromium --headless --no-sandbox --disable-gpu --enable-logging=stderr --v=0 \
        --virtual-time-budget=30000 --dump-dom "$1" 2> "$tmp/console.txt"
}
attr() { grep -o "$1=\"[^\"]*\"" | head -1 | cut -d'"' -f2; }

# waits until the file $1 has a line matching $2, as long as process $3 runs.
wait_for() {
    while ! grep -q "$2" "$1"; do
        kill -0 "$3" 2> /dev/null || fail "no \"$2\" before the process ended: $(cat "$1")"
        sleep 0.1
    done
}
# connections() PORT: established TCP connections whose local port is PORT.
connections() {
    awk -v port="$(printf '%04X' "$1")" 'NR > 1 { split($2, local, ":"); if (local[2] == port && $4 == "01") n++ } END { print n + 0 }' /proc/net/tcp
}

# The run holds before its first step until the page is connected (CONVNETS_HOLD_AT and
# CONVNETS_HOLD_RELEASE), so that the page follows the whole run whatever the machine's load.
CONVNETS_HOLD_AT=1:1 CONVNETS_HOLD_RELEASE="$tmp/release" \
    "$bin" train googlenet --resize 32 --batch-size 64 --epochs 3 --model-ema --auto-augment ta_wide \
    --serve --out "$tmp/runs/googlenet" \
    > /dev/null 2> "$tmp/train.txt" &
train=$!
wait_for "$tmp/train.txt" "held at epoch 1, batch 1" "$train"
url=$(grep -o "http://[0-9.:]*/" "$tmp/train.txt") || fail "no URL printed: $(cat "$tmp/train.txt")"
[[ $url == http://127.0.0.1:* ]] || fail "not loopback by default: $url"
port=${url##*:}
port=${port%/}

dump "${url}?updates=40" > "$tmp/page.html" &
page=$!
while [ "$(connections "$port")" -lt 1 ]; do
    kill -0 "$page" 2> /dev/null || fail "the browser ended before it connected"
    sleep 0.05
done
touch "$tmp/release"
wait "$page" || fail "the browser failed"
dom=$(cat "$tmp/page.html")
first=$(attr data-first-points <<< "$dom")
last=$(attr data-points <<< "$dom")
updates=$(attr data-updates <<< "$dom")
[ "$updates" = 40 ] || fail "the page received $updates updates, not 40"
[ -n "$first" ] && [ "$last" -gt "$first" ] || fail "the chart did not gain points ($first -> $last)"
grep -q 'class="status">running: epoch' <<< "$dom" || fail "no running status in the page"
grep -q '<polyline' <<< "$dom" || fail "no line drawn"
grep -q 'id="errors"></div>' <<< "$dom" || fail "script errors: $(grep -o 'id="errors">[^<]*' <<< "$dom")"
! grep -i "uncaught\|console.*error" "$tmp/console.txt" || fail "errors in the browser's console"
! grep -q 'object Object' <<< "$dom" || fail "a setting shown as [object Object]"
grep -q '<td>recipe.optimizer</td><td>sgd</td>' <<< "$dom" || fail "no recipe.optimizer row in the configuration"
echo "live_view: while training, one page followed 40 updates: $first -> $last points" >&2
wait "$train" || fail "training failed: $(cat "$tmp/train.txt")"

# After the run: a browser connecting late to `convnets serve` sees the finished run whole.
"$bin" serve "$tmp/runs" > /dev/null 2> "$tmp/serve.txt" &
wait_for "$tmp/serve.txt" "http://" $!
url=$(grep -o "http://[0-9.:]*/" "$tmp/serve.txt") || fail "serve printed no URL: $(cat "$tmp/serve.txt")"
dom=$(dump "${url}?updates=1")
grep -q 'class="status">finished: epoch 3 of 3' <<< "$dom" || fail "the finished run is not shown as such"
[ "$(attr data-points <<< "$dom")" = 21 ] || fail "expected 3 epochs x 7 points"
grep -q 'id="errors"></div>' <<< "$dom" || fail "script errors after the run"
grep -q 'data-series="ema"' <<< "$dom" || fail "no EMA line in the chart"
grep -q 'class="final">epoch 3: [^<]*, EMA 0\.[0-9]*<' <<< "$dom" || fail "no EMA accuracy in the last epoch's line"
grep -q '<td>auto_augment.policy</td><td>ta_wide</td>' <<< "$dom" || fail "no auto_augment row in the configuration"
if [ -n "${SCREENSHOT:-}" ]; then
    timeout 60 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1240,760 \
        --virtual-time-budget=30000 --screenshot="$SCREENSHOT" "${url}?updates=1" 2> /dev/null
fi
echo "live_view: 2 passed, 0 failed" >&2
