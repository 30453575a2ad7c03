# Sourced by scripts/test and scripts/robustness: installs moto and grpcurl
# into a virtualenv under target/ (re-made when tests/requirements.txt
# changes), starts moto on a free 127.0.0.1 port (stopped when the calling
# script exits) and exports what the tests read.

VENV=target/test-venv
if ! cmp -s tests/requirements.txt "$VENV/requirements.txt" 2>/dev/null; then
  echo "==> installing moto and grpcurl into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt "$VENV/requirements.txt"
fi
# (Re)starts moto on a fresh port, empty; stopped when the script exits.
start_moto() {
  if [ -n "${MOTO_PID:-}" ]; then kill "$MOTO_PID" 2>/dev/null || true; fi
  MOTO_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo "==> starting moto on 127.0.0.1:$MOTO_PORT (log: target/moto.log)"
  "$VENV/bin/python" tests/tools/moto_server.py 127.0.0.1 "$MOTO_PORT" >target/moto.log 2>&1 &
  MOTO_PID=$!
  trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
  python3 - "$MOTO_PORT" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/moto-api/"
for _ in range(300):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("moto did not start; see target/moto.log")
PY
  export NOTES_TEST_DYNAMODB_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
}
start_moto
export NOTES_TEST_GRPCURL="$PWD/$VENV/bin/grpcurl"
# Dummy credentials for moto; no profile files and no instance-metadata lookups.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
