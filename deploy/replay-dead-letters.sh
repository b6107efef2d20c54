#!/usr/bin/env bash
# Replay dead letters: pull them from the subscription that keeps them, publish each one again
# to the topic it came from (its attributes kept, Pub/Sub's dead-letter bookkeeping dropped),
# then acknowledge it. A message that cannot be replayed stays where it is.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: deploy/replay-dead-letters.sh [--env FILE] [--dry-run] [--requests] [--limit N]

  --requests   replay dead-lettered requests (submit) instead of tracking messages (poll)
  --limit N    replay at most N messages (default 10)
  --dry-run    print the gcloud commands, with placeholders for the messages
Look before replaying: gcloud pubsub subscriptions pull SUBSCRIPTION --limit=5 (no ack).
EOF
}

SOURCE=jobs
LIMIT=10
# What --dry-run shows in place of pulled messages.
DRY_RUN_SAMPLE='[{"ackId": "ACK_ID", "message": {"data": "TUVTU0FHRV9EQVRB",
  "attributes": {"KEY": "VALUE", "CloudPubSubDeadLetterSourceDeliveryCount": "100"}}}]'

main() {
  while (($#)); do
    case $1 in
      --requests) SOURCE=requests; shift ;;
      --limit) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--limit needs a positive number"; LIMIT=$2; shift 2 ;;
      *) common_option "$@" || die "unknown option: $1 (see --help)"; shift "$SHIFT" ;;
    esac
  done
  load_settings
  local subscription=$JOBS_DEAD_LETTER_SUB topic=$GATEWAY_JOBS_TOPIC
  if [[ $SOURCE == requests ]]; then
    subscription=$REQUESTS_DEAD_LETTER_SUB topic=$GATEWAY_REQUESTS_TOPIC
  fi
  say "replay up to $LIMIT dead letters from $subscription to $topic"
  MESSAGES=$(mktemp)
  trap 'rm -f "$MESSAGES"' EXIT
  gc_value "$DRY_RUN_SAMPLE" pubsub subscriptions pull "$subscription" --limit="$LIMIT" \
    --format=json | python3 -c "$SPLIT_MESSAGES" >"$MESSAGES"
  if ((DRY_RUN)); then say "for each pulled message (placeholders):"; fi
  replay_each "$topic" "$subscription" <"$MESSAGES"
}

# Reads ack id, data and attributes flag (NUL-separated) per message from stdin.
replay_each() {
  local topic=$1 subscription=$2 ack_id data attributes count=0 publish
  while IFS= read -r -d '' ack_id && IFS= read -r -d '' data \
    && IFS= read -r -d '' attributes; do
    publish=(pubsub topics publish "$topic" --message="$data")
    [[ -z $attributes ]] || publish+=(--attribute="$attributes")
    gc "${publish[@]}" </dev/null
    gc pubsub subscriptions ack "$subscription" --ack-ids="$ack_id" </dev/null
    count=$((count + 1))
  done
  ((DRY_RUN)) || say "replayed $count message(s)"
}

# gcloud's JSON of pulled messages -> ack id, data, --attribute value, each NUL-terminated.
# shellcheck disable=SC2016
SPLIT_MESSAGES='
import base64, json, sys

def text(data):
    raw = base64.b64decode(data.replace("-", "+").replace("_", "/") + "=" * (-len(data) % 4))
    return raw.decode("utf-8")

def attribute_flag(attributes):
    kept = {k: v for k, v in attributes.items() if not k.startswith("CloudPubSubDeadLetter")}
    pairs = [f"{k}={v}" for k, v in sorted(kept.items())]
    joined = ",".join(pairs)
    if not any("," in pair for pair in pairs):
        return joined
    # gcloud list syntax: ^D^ sets another delimiter when a value holds a comma.
    delimiter = next(d for d in ";|~#!" if not any(d in pair for pair in pairs))
    return f"^{delimiter}^" + delimiter.join(pairs)

for received in json.load(sys.stdin):
    message = received["message"]
    try:
        data = text(message.get("data", ""))
    except ValueError:
        print("skipped", message.get("messageId"), "(data is not UTF-8 text)", file=sys.stderr)
        continue
    flag = attribute_flag(message.get("attributes", {}))
    sys.stdout.write("\0".join([received["ackId"], data, flag]) + "\0")
'

main "$@"
