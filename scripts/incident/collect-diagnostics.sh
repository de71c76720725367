#!/usr/bin/env bash
# Collect a hostdiag diagnostic bundle from this host for an incident.
#
# Usage: collect-diagnostics.sh [INCIDENT_ID]
#
# Runs `agentctl collect`: the running agent answers with its flight recorder's
# history; with no agent running, agentctl collects standalone (no history).
# With INCIDENT_ID the bundle records the incident and, when the agent has a
# collector configured, is uploaded to it.
#
# Environment:
#   HOSTDIAG_CONFIG      agent config (default: /etc/hostdiag/agent.toml if present)
#   HOSTDIAG_OUTPUT_DIR  directory for the bundle (default: the agent's bundle directory)
#   HOSTDIAG_AGENTCTL    agentctl to run (default: PATH, /opt/hostdiag/bin, the repo's .venv/bin)
#
# Exit status: 0 a bundle was written; 1 nothing could be collected;
# 2 usage or configuration error.
set -euo pipefail

prog=${0##*/}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

fail() {  # fail STATUS MESSAGE...
  local status=$1
  shift
  printf '%s: %s\n' "$prog" "$*" >&2
  exit "$status"
}

incident=""
case $# in
  0) ;;
  1)
    case $1 in
      -h|--help) usage; exit 0 ;;
      -*) fail 2 "unknown option: $1 (usage: $prog [INCIDENT_ID])" ;;
      *) incident=$1 ;;
    esac
    ;;
  *) fail 2 "too many arguments (usage: $prog [INCIDENT_ID])" ;;
esac

find_agentctl() {
  local here candidate
  if [ -n "${HOSTDIAG_AGENTCTL:-}" ]; then
    [ -x "$HOSTDIAG_AGENTCTL" ] && { printf '%s\n' "$HOSTDIAG_AGENTCTL"; return 0; }
    return 1
  fi
  if candidate=$(command -v agentctl 2>/dev/null); then
    printf '%s\n' "$candidate"
    return 0
  fi
  here=$(cd "$(dirname "$0")/../.." && pwd -P)
  for candidate in /opt/hostdiag/bin/agentctl "$here/.venv/bin/agentctl"; do
    if [ -x "$candidate" ]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

agentctl=$(find_agentctl) || fail 1 "nothing collected: agentctl not found" \
  "(looked in: ${HOSTDIAG_AGENTCTL:-PATH, /opt/hostdiag/bin, .venv/bin of the repository});" \
  "install hostdiag (docs/operations.md) or set HOSTDIAG_AGENTCTL"

args=(collect)
config=${HOSTDIAG_CONFIG:-}
if [ -n "$config" ]; then
  [ -r "$config" ] || fail 2 "HOSTDIAG_CONFIG=$config is not a readable file"
  args+=(--config "$config")
elif [ -r /etc/hostdiag/agent.toml ]; then
  config=/etc/hostdiag/agent.toml
  args+=(--config "$config")
fi
[ -n "$incident" ] && args+=(--incident "$incident")
if [ -n "${HOSTDIAG_OUTPUT_DIR:-}" ]; then
  [ -d "$HOSTDIAG_OUTPUT_DIR" ] || fail 1 "nothing collected: output directory $HOSTDIAG_OUTPUT_DIR does not exist"
  args+=(--output "$HOSTDIAG_OUTPUT_DIR")
fi

echo "collecting a hostdiag bundle on $(hostname)${incident:+ for incident $incident}" \
  "(config: ${config:-built-in defaults})" >&2
status=0
report=$("$agentctl" "${args[@]}") || status=$?
if [ "$status" -ne 0 ]; then
  [ -n "$report" ] && printf '%s\n' "$report"
  if [ "$status" -eq 2 ]; then
    fail 2 "nothing collected: agentctl refused the request (usage or configuration error above)"
  fi
  fail 1 "nothing collected: agentctl could not write a bundle (reason above, exit status $status)"
fi

bundle=$(printf '%s\n' "$report" | sed -n 's/^bundle  *//p' | head -n 1)
if [ -z "$bundle" ] || [ ! -f "$bundle" ]; then
  fail 1 "agentctl reported success but no bundle file was found; its output: $report"
fi
mode=$(printf '%s\n' "$report" | sed -n 's/^mode  *\([a-z]*\).*/\1/p' | head -n 1)
upload=$(printf '%s\n' "$report" | sed -n 's/^upload  *//p' | head -n 1)

echo "bundle:  $bundle"
if [ "$mode" = standalone ]; then
  echo "source:  collected standalone: no agent was running, so the bundle has no recorder history"
else
  echo "source:  the running agent (includes its flight recorder history)"
fi
if [ -n "$incident" ]; then
  if [ -n "$upload" ]; then
    echo "upload:  $upload"
  elif [ "$mode" != standalone ]; then
    echo "upload:  the agent sends it to its collector when one is configured ([collector] address)"
  fi
fi
echo "verify:  $agentctl inspect $bundle"
echo "open:    mkdir -p bundle && tar --zstd -xf $bundle -C bundle    (manifest.json lists every member)"
