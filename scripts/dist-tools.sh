# Sourced by scripts/build-dist and scripts/check-dist: makes sure the distribution tools of
# dist-requirements.txt are installed in a cached virtual environment and puts it first on PATH
# (maturin finds zig there through the `ziglang` package).
#
# The environment lives in $MSP_DIST_TOOLS if set, else under ${XDG_CACHE_HOME:-~/.cache}; its
# name carries a hash of the requirements, so changing a pin makes a new one.

_msp_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_msp_reqs="$_msp_root/scripts/dist-requirements.txt"
_msp_python="${PYTHON:-$(command -v python3 || command -v python)}"
_msp_hash="$(cat "$_msp_reqs" <("$_msp_python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)"
DIST_TOOLS="${MSP_DIST_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/memory-service-processor/dist-tools-$_msp_hash}"

if [ ! -f "$DIST_TOOLS/.complete" ]; then
    echo "dist-tools: installing $(grep -v '^#' "$_msp_reqs" | xargs) into $DIST_TOOLS" >&2
    rm -rf "$DIST_TOOLS"
    "$_msp_python" -m venv "$DIST_TOOLS"
    "$DIST_TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check -r "$_msp_reqs"
    touch "$DIST_TOOLS/.complete"
fi
export PATH="$DIST_TOOLS/bin:$PATH"
unset _msp_root _msp_reqs _msp_python _msp_hash
