#!/usr/bin/env bash
# Deploy a subscriber to the gateway's completion events (default: examples/subscriber) that
# receives only the events of some workflows and outcomes. Idempotent: run it again after a change.
#
# Eventarc's Pub/Sub triggers filter on the CloudEvent type alone, so this does what such a trigger
# does, with the filter Pub/Sub applies to message attributes: the function (HTTP, private), and a
# push subscription on the events topic with --message-filter on `workflow` / `outcome` and an
# OIDC token of the gateway's trigger identity, which may invoke it. functions-framework hands the
# push to the function as the CloudEvent an Eventarc trigger would. Run deploy/deploy.sh first.
# The client package goes up with the function from this checkout (client/, as ./client in its
# requirements.txt), so the example's placeholder git URL need not be real.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF_USAGE'
usage: deploy/deploy-subscriber.sh [--env FILE] [--dry-run] [--workflow NAME]... [--outcome OUTCOME]...
                                   [--name NAME] [--source DIR] [--entry-point FUNCTION] [--replace]
       deploy/deploy-subscriber.sh [--env FILE] [--dry-run] [--name NAME] --delete

  --workflow NAME      only events of this workflow (repeat for several; default: every workflow)
  --outcome OUTCOME    only SUCCEEDED, FAILED, TIMED_OUT or CANCELLED (repeat; default: every outcome)
  --name NAME          the function's name (default: PREFIX-subscriber); its subscription is NAME-push
  --source DIR         the function's source (default: examples/subscriber)
  --entry-point FN     (default: on_job_event)
  --replace            delete and re-create the subscription: a Pub/Sub filter is fixed at creation
  --delete             delete the subscription and the function (the shared PREFIX-sub account stays)
  --env FILE           settings file (default deploy/env; start from deploy/env.example)
  --dry-run            print every gcloud command instead of running it (no credentials needed)
EOF_USAGE
}

OUTCOMES_ALLOWED=(SUCCEEDED FAILED TIMED_OUT CANCELLED)

main() {
  local workflows=() outcomes=() name="" source="" entry=on_job_event replace=0 delete=0
  while (($#)); do
    case $1 in
      --workflow) [[ $# -ge 2 ]] || die "--workflow needs a name"; workflows+=("$2"); shift 2 ;;
      --outcome) [[ $# -ge 2 ]] || die "--outcome needs a value"; outcomes+=("$2"); shift 2 ;;
      --name) [[ $# -ge 2 ]] || die "--name needs a value"; name=$2; shift 2 ;;
      --source) [[ $# -ge 2 ]] || die "--source needs a directory"; source=$2; shift 2 ;;
      --entry-point) [[ $# -ge 2 ]] || die "--entry-point needs a function"; entry=$2; shift 2 ;;
      --replace) replace=1; shift ;;
      --delete) delete=1; shift ;;
      *) common_option "$@" || die "unknown option: $1 (see --help)"; shift "$SHIFT" ;;
    esac
  done
  load_settings
  ((DRY_RUN)) || command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud SDK"
  name=${name:-$NAME_PREFIX-subscriber}
  source=${source:-$REPO_ROOT/examples/subscriber}
  [[ $name =~ ^[a-z][a-z0-9-]{0,57}$ ]] || die "--name must be lower-case letters, digits and dashes"
  if ((delete)); then
    say "removing subscriber $name"
    gc_try pubsub subscriptions delete "$name-push"
    gc_try functions delete "$name" --gen2 --region="$REGION" --quiet
    ((FAILURES == 0)) || die "$FAILURES deletions failed"
    return
  fi
  [[ -f $source/main.py ]] || die "no main.py in $source"
  local filter
  filter=$(message_filter workflows outcomes)
  say "subscriber $name on $GATEWAY_EVENTS_TOPIC, project $PROJECT, region $REGION"
  say "filter: ${filter:-(none: every completion event)}"
  stage_source "$source"
  create_runtime_account
  deploy_subscriber "$name" "$STAGED" "$entry"
  gc_retry functions add-invoker-policy-binding "$name" --region="$REGION" --member="$(sa_member trigger)"
  subscribe "$name" "$filter" "$replace"
}

# `attributes.workflow = "a"`, ORed per attribute and ANDed across (Pub/Sub's filter syntax,
# https://cloud.google.com/pubsub/docs/subscription-message-filter); empty when nothing is chosen.
message_filter() {
  local -n chosen_workflows=$1 chosen_outcomes=$2
  local parts=() item
  for item in "${chosen_workflows[@]}"; do
    [[ $item =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || die "not a workflow name: $item"
  done
  for item in "${chosen_outcomes[@]}"; do
    [[ " ${OUTCOMES_ALLOWED[*]} " == *" $item "* ]] || die "--outcome must be one of ${OUTCOMES_ALLOWED[*]}, not $item"
  done
  ((${#chosen_workflows[@]} == 0)) || parts+=("$(any_of workflow "${chosen_workflows[@]}")")
  ((${#chosen_outcomes[@]} == 0)) || parts+=("$(any_of outcome "${chosen_outcomes[@]}")")
  local joined="" part
  for part in "${parts[@]}"; do
    joined=${joined:+$joined AND }$part
  done
  ((${#joined} <= 256)) || die "the filter is longer than Pub/Sub's 256 bytes: subscribe fewer workflows per function"
  printf '%s\n' "$joined"
}

any_of() {
  local attribute=$1 out="" value
  shift
  for value in "$@"; do
    out=${out:+$out OR }"attributes.$attribute = \"$value\""
  done
  if (($# > 1)); then out="($out)"; fi
  printf '%s\n' "$out"
}

# A copy of the source with client/ beside it and `./client` for the client's requirement line.
# Sets STAGED. Kept under --dry-run (its path is printed) so it can be inspected; removed after a real run.
stage_source() {
  local source=$1 staged
  staged=$(mktemp -d "${TMPDIR:-/tmp}/subscriber-source.XXXXXX")
  STAGED=$staged
  cp -R "$source/." "$staged/"
  mkdir "$staged/client"
  cp -R "$REPO_ROOT/client/pyproject.toml" "$REPO_ROOT/client/README.md" "$REPO_ROOT/client/src" "$staged/client/"
  find "$staged" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  if [[ -f $staged/requirements.txt ]]; then
    sed -E 's|^workflow-gateway-client[[:space:]]*@.*$|./client|' "$source/requirements.txt" >"$staged/requirements.txt"
  fi
  if ((DRY_RUN)); then say "source staged in $staged (client from this checkout)"; else trap 'rm -rf "$STAGED"' EXIT; fi
}

# Its own identity with no roles: the example only logs. Give it what your subscriber needs.
create_runtime_account() {
  gc_exists iam service-accounts describe "$(sa_email sub)" \
    || gc iam service-accounts create "$NAME_PREFIX-sub" --display-name="Workflow gateway: event subscribers"
}

deploy_subscriber() {
  local name=$1 source=$2 entry=$3
  local args=(functions deploy "$name" --gen2 --region="$REGION" --runtime="$RUNTIME" --source="$source"
    --entry-point="$entry" --trigger-http --no-allow-unauthenticated --service-account="$(sa_email sub)"
    --memory=256Mi --cpu=1 --concurrency=20 --timeout=60s --max-instances=10 "$(build_sa_flag)")
  gc "${args[@]}"
}

subscribe() {
  local name=$1 filter=$2 replace=$3 subscription="$1-push" url
  url=$(gc_value "https://$name-dry-run.a.run.app" functions describe "$name" --gen2 --region="$REGION" \
    '--format=value(serviceConfig.uri)')
  local push=(--push-endpoint="$url" --push-auth-service-account="$(sa_email trigger)"
    --ack-deadline=60 --min-retry-delay=10s --max-retry-delay=600s)
  if gc_exists pubsub subscriptions describe "$subscription"; then
    if ((replace)); then
      gc pubsub subscriptions delete "$subscription"
    else
      say "$subscription exists: its endpoint is updated, its filter stays (--replace to change it)"
      gc pubsub subscriptions update "$subscription" "${push[@]}"
      return
    fi
  fi
  local create=(pubsub subscriptions create "$subscription" --topic="$GATEWAY_EVENTS_TOPIC" "${push[@]}"
    --expiration-period=never)
  [[ -z $filter ]] || create+=(--message-filter="$filter")
  gc "${create[@]}"
}

main "$@"
