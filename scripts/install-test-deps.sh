#!/usr/bin/env bash
# Installs what the tests use besides Rust, when missing: a real MQTT broker and clients
# (mosquitto, mosquitto_pub, mosquitto_sub), a real browser (Debian's chromium) and Prometheus'
# metrics checker (promtool, in Debian's prometheus package).
# Debian/Ubuntu only; needs root (or sudo). Safe to run again.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)

if ((${#need[@]} == 0)); then
    echo "test dependencies present"
    exit 0
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
    sudo=(sudo)
fi
echo "installing: ${need[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packaged broker and Prometheus start system services (ports 1883, 9090); tests start
# their own brokers and need only promtool.
if command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl disable --now mosquitto prometheus >/dev/null 2>&1 || true
fi
echo "installed: ${need[*]}"
