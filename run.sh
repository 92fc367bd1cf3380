#!/usr/bin/env bash
# Set-up and entry points for a fresh machine:
#   ./run.sh demo   build the synthetic default corpus, train a CTC model, print held-out WER
#   ./run.sh test   run the test suite (add pytest arguments after it, e.g. -m slow)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

install_system() {
    local need=()
    command -v espeak-ng >/dev/null || need+=(espeak-ng)
    command -v flite >/dev/null || need+=(flite)
    command -v text2wave >/dev/null || need+=(festival)
    command -v sox >/dev/null || need+=(sox)
    # the labeling queue's tests start a PostgreSQL server and drive a headless Chromium
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
    command -v chromium >/dev/null || need+=(chromium)
    command -v chromedriver >/dev/null || need+=(chromium-driver)
    # every package the corpus generator names (voices included)
    while read -r pkg; do
        [[ -z "$pkg" || "$pkg" == \#* ]] && continue
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done < recipes/synth/apt-packages.txt
    if ((${#need[@]})); then
        echo "installing Debian packages: ${need[*]}"
        local sudo=""
        [[ $(id -u) -ne 0 ]] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

install_python() {
    if ! $PY -c "import asr, torch, torchaudio, librosa, jiwer, num2words, onnxruntime, pytest_timeout,
fastapi, uvicorn, sqlalchemy, alembic, psycopg, argon2, multipart, httpx, selenium,
websockets, wyoming, prometheus_client" 2>/dev/null; then
        echo "installing Python packages (torch 2.14.1, torchaudio 2.11.0, ...)"
        $PY -m pip install -q -e '.[test,queue,server]'
    fi
}

case "${1:-}" in
    demo)
        shift
        install_system
        install_python
        exec $PY -m recipes.synth.demo "$@"
        ;;
    test)
        shift
        install_system
        install_python
        exec $PY -m pytest -q "$@"
        ;;
    *)
        echo "usage: ./run.sh demo | ./run.sh test [pytest args]" >&2
        exit 2
        ;;
esac
