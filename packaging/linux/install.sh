#!/usr/bin/env bash
# Install LoRA Studio's desktop entry and icons for the current user, so it appears in the
# application menu and launches the app from the environment it is installed in.
#
#   packaging/linux/install.sh                      # the lora-studio found as described below
#   packaging/linux/install.sh --exec /path/to/lora-studio   # e.g. dist/lora-studio/lora-studio
#   packaging/linux/install.sh --uninstall
#
# Which lora-studio: --exec if given, else the active virtual environment's ($VIRTUAL_ENV), else
# this checkout's .venv (made by `make run`), else the one on PATH. The absolute path is written
# into the entry now, at install time: a desktop launcher does not see your shell's PATH or venv.
# Files go to ${XDG_DATA_HOME:-~/.local/share}/applications and .../icons/hicolor/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"
APPS="$DATA/applications"
ICONS="$DATA/icons/hicolor"
SIZES="16 32 48 64 128 256 512"
ENTRY="$APPS/lora-studio.desktop"

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

refresh_caches() {
    # best effort: menus pick the entry up without these too, just later
    if command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database -q "$APPS" 2>/dev/null || true
    fi
    if command -v gtk-update-icon-cache >/dev/null 2>&1 && [ -f "$ICONS/index.theme" ]; then
        gtk-update-icon-cache -q -t "$ICONS" 2>/dev/null || true
    fi
}

uninstall() {
    rm -f "$ENTRY" "$ICONS/scalable/apps/lora-studio.svg"
    for size in $SIZES; do
        rm -f "$ICONS/${size}x${size}/apps/lora-studio.png"
    done
    refresh_caches
    echo "Removed LoRA Studio's desktop entry and icons from $DATA"
}

find_exec() {
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/lora-studio" ]; then
        echo "$VIRTUAL_ENV/bin/lora-studio"
    elif [ -x "$ROOT/.venv/bin/lora-studio" ]; then
        echo "$ROOT/.venv/bin/lora-studio"
    elif command -v lora-studio >/dev/null 2>&1; then
        command -v lora-studio
    fi
}

EXEC=""
while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) uninstall; exit 0 ;;
        --exec) [ $# -ge 2 ] || { echo "error: --exec needs a path" >&2; exit 2; }; EXEC="$2"; shift 2 ;;
        --exec=*) EXEC="${1#--exec=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$EXEC" ]; then
    EXEC="$(find_exec)"
    if [ -z "$EXEC" ]; then
        echo "error: no lora-studio command found (no active venv, no $ROOT/.venv, none on PATH)." >&2
        echo "Run \`make run\` first, or pass --exec /path/to/lora-studio." >&2
        exit 1
    fi
fi
if [ ! -x "$EXEC" ] || [ -d "$EXEC" ]; then
    echo "error: $EXEC is not an executable file; pass --exec /path/to/lora-studio" >&2
    exit 1
fi
EXEC="$(cd "$(dirname "$EXEC")" && pwd)/$(basename "$EXEC")"
case "$EXEC" in
    *[\"\`\$\\]*) echo "error: $EXEC contains a character a desktop entry cannot quote (\" \` \$ \\)" >&2; exit 1 ;;
esac

PNG="$ROOT/resources/icons/png"
for size in $SIZES; do
    if [ ! -f "$PNG/lora-studio-$size.png" ]; then
        echo "error: $PNG/lora-studio-$size.png is missing; render the icons with:" >&2
        echo "  QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/render_icons.py" >&2
        exit 1
    fi
done

mkdir -p "$APPS" "$ICONS/scalable/apps"
for size in $SIZES; do
    mkdir -p "$ICONS/${size}x${size}/apps"
    install -m 644 "$PNG/lora-studio-$size.png" "$ICONS/${size}x${size}/apps/lora-studio.png"
done
install -m 644 "$ROOT/resources/icons/lora-studio.svg" "$ICONS/scalable/apps/lora-studio.svg"

# Quote the path (desktop entry spec: inside quotes only " ` $ \ need escaping, refused above).
tmp="$(mktemp "$APPS/.lora-studio.desktop.XXXXXX")"
safe="$(printf '%s' "$EXEC" | sed -e 's/[&|]/\\&/g')"  # & and | are special in sed's replacement
sed -e "s|^Exec=lora-studio |Exec=\"$safe\" |" -e "s|^TryExec=lora-studio\$|TryExec=$safe|" \
    "$HERE/lora-studio.desktop" > "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$ENTRY"
refresh_caches
echo "Installed $ENTRY"
echo "  launches: $EXEC gui"
echo "  icons:    $ICONS/{16..512}/apps/lora-studio.png, scalable/apps/lora-studio.svg"
