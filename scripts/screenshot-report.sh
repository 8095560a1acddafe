#!/usr/bin/env bash
# Render an HTML report page in headless Chromium and save a screenshot, to look at what a reader sees.
#   scripts/screenshot-report.sh PAGE.html OUT.png [WIDTHxHEIGHT]
# Needs Debian's `chromium` (apt-get install chromium). Exits 3 when it is missing.
set -euo pipefail
page=${1:?usage: $0 PAGE.html OUT.png [WIDTHxHEIGHT]}
out=${2:?usage: $0 PAGE.html OUT.png [WIDTHxHEIGHT]}
size=${3:-1400x1800}
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
    echo "screenshot-report: no chromium on PATH (apt-get install chromium)" >&2
    exit 3
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: containers and root shells have no user namespaces for Chromium's sandbox.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --window-size="${size/x/,}" --screenshot="$(realpath -m "$out")" "file://$(realpath "$page")" >/dev/null 2>&1
test -s "$out"
echo "$out"
