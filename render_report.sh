#!/usr/bin/env bash
# Render <out_dir>/report.html (written by evaluate.py) in headless Chromium and save a full-page
# screenshot as <out_dir>/report.png: a way to look at the page on a machine with no display.
#
#   bash render_report.sh [out_dir]        # out_dir defaults to "out"
#
# Needs Debian's `chromium` (installed with apt-get when /usr/bin/chromium is missing; that needs
# root). The page is drawn in a tall window, then the empty background under it is cropped off with
# the project's Python (numpy + imageio), so the image is as tall as the page. Nothing else needs
# this script: tests read the HTML itself.
set -euo pipefail

out_dir="${1:-out}"
width=1400
height=16000            # taller than any report of a few clips; the blank rest is cropped below
if [ ! -f "$out_dir/report.html" ]; then
    echo "render_report.sh: $out_dir/report.html not found (run python evaluate.py)" >&2; exit 1
fi
page="$(cd "$out_dir" && pwd)/report.html"
shot="$(cd "$out_dir" && pwd)/report.png"

if [ ! -x /usr/bin/chromium ]; then
    apt-get update && apt-get install -y chromium
fi

# --virtual-time-budget lets the posters load before the shot is taken. Chromium's chatter on stderr
# (dbus, fonts) is shown only when it fails.
log="$(mktemp)"
rm -f "$shot"                                           # so an old screenshot never passes for a new one
if ! /usr/bin/chromium --headless --disable-gpu --no-sandbox --hide-scrollbars --mute-audio \
        --virtual-time-budget=5000 --window-size="$width,$height" --screenshot="$shot" "file://$page" \
        >"$log" 2>&1 || [ ! -s "$shot" ]; then
    cat "$log" >&2; rm -f "$log"
    echo "render_report.sh: chromium wrote no screenshot" >&2; exit 1
fi
rm -f "$log"

# Crop the rows under the page that are all the colour of the bottom row (the page background)
python="$(dirname "$0")/.venv/bin/python"
[ -x "$python" ] || python=python3
"$python" - "$shot" "$height" <<'EOF' || echo "render_report.sh: not cropped (needs numpy and imageio)" >&2
import sys
import imageio.v3 as iio
import numpy as np
path, window = sys.argv[1], int(sys.argv[2])
img = iio.imread(path)
blank = (img == img[-1]).all(axis=(1, 2))             # rows identical to the bottom row
last = len(blank) - 1 - int(np.argmin(blank[::-1]))   # the last row with anything drawn on it
iio.imwrite(path, img[:min(last + 24, len(img))])
if last >= window - 1:
    print(f"render_report.sh: the page is taller than {window} px; the screenshot is cut", file=sys.stderr)
print(f"{path}: {img.shape[1]}x{min(last + 24, len(img))}")
EOF
