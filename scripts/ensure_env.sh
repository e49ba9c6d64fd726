# Sourced by run_1p.sh, run_8p.sh, run_tests.sh and .ci/run.
# Uses the active virtual environment if there is one; otherwise creates .venv beside this checkout,
# installs the package (editable) with the extras named in $SSD_TF_EXTRAS, and activates it.
_ssd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_ssd_extras="${SSD_TF_EXTRAS:-}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  _py="${PYTHON:-python3}"
  if ! "$_py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
    echo "ssd_tf needs Python >= 3.10 (found: $("$_py" --version 2>&1)). Set PYTHON=/path/to/python3.10+." >&2
    return 1 2>/dev/null || exit 1
  fi
  if [ ! -x "$_ssd_root/.venv/bin/python" ]; then
    echo "[setup] creating $_ssd_root/.venv" >&2
    "$_py" -m venv "$_ssd_root/.venv" || { return 1 2>/dev/null || exit 1; }
  fi
  # shellcheck disable=SC1091
  . "$_ssd_root/.venv/bin/activate"
fi
_stamp="$VIRTUAL_ENV/.ssd_tf_installed${_ssd_extras:+-$_ssd_extras}"
# An install with more extras (e.g. test,torch for test) serves too.
for _other in "$VIRTUAL_ENV"/.ssd_tf_installed*; do
  [ -f "$_other" ] && [ ! "$_ssd_root/setup.py" -nt "$_other" ] || continue
  _have=",${_other##*/.ssd_tf_installed-},"
  _missing=""
  for _extra in ${_ssd_extras//,/ }; do
    case "$_have" in *",$_extra,"*) ;; *) _missing=1 ;; esac
  done
  if [ -z "$_missing" ]; then _stamp="$_other"; break; fi
done
if [ ! -f "$_stamp" ] || [ "$_ssd_root/setup.py" -nt "$_stamp" ]; then
  echo "[setup] installing ssd_tf${_ssd_extras:+[$_ssd_extras]} into $VIRTUAL_ENV" >&2
  python -m pip install --quiet --upgrade pip >&2 || true
  if python -m pip install --quiet -e "$_ssd_root${_ssd_extras:+[$_ssd_extras]}" >&2; then
    touch "$_stamp"
  else
    # The torch extra alone unpacks to ~5.5 GB; a full disk is the usual reason for a failed install.
    _free_kb="$(df -Pk "$VIRTUAL_ENV" 2>/dev/null | awk 'NR==2 {print $4}')"
    echo "[setup] pip install failed (${_free_kb:+$((_free_kb / 1048576)) GB free on the disk of $VIRTUAL_ENV; }ssd_tf[test,torch] needs about 8 GB, without torch about 2.5 GB: SSD_TF_TEST_EXTRAS=test)" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
unset _py _ssd_extras _stamp _other _have _missing _extra _free_kb
