#!/usr/bin/env bash
# Remove what deploy.sh (and deploy-subscriber.sh) created: the alert policies, the notification channel deploy created, the
# dashboard and the log-based metrics, the sweep schedule, the five functions (their Eventarc
# triggers and subscriptions go with them), the Cloud Tasks queue of the status checks and submit
# hand-offs (its IAM goes with it), topics and dead-letter subscriptions, IAM bindings, service accounts and,
# with --delete-secrets, the secrets.
# Kept on purpose: the Firestore database (the ledger's data) and the enabled APIs.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: deploy/teardown.sh [--env FILE] [--dry-run] [--yes] [--delete-secrets]

  --env FILE         settings file (default deploy/env)
  --dry-run          print every gcloud command instead of running it
  --yes              do not ask for confirmation
  --delete-secrets   also delete the Secret Manager secrets (their values are lost)
EOF
}

DRY_RUN_ASSUME=present
ASSUME_YES=0
DELETE_SECRETS=0

main() {
  while (($#)); do
    case $1 in
      --yes) ASSUME_YES=1; shift ;;
      --delete-secrets) DELETE_SECRETS=1; shift ;;
      *) common_option "$@" || die "unknown option: $1 (see --help)"; shift "$SHIFT" ;;
    esac
  done
  load_settings
  ((DRY_RUN)) || command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud SDK"
  collect_secrets
  confirm
  say "gateway teardown in project $PROJECT, region $REGION"
  delete_monitoring
  gc_try scheduler jobs delete "$SCHEDULER_JOB" --location="$REGION" --quiet
  delete_functions
  delete_subscriber
  say "Cloud Tasks queue $TASKS_QUEUE with its pending checks and hand-offs (its name is reserved for 7 days after)"
  gc_try tasks queues delete "$TASKS_QUEUE" --location="$TASKS_LOCATION" --quiet
  delete_topics
  revoke_runtime_roles
  delete_service_accounts
  if ((DELETE_SECRETS)); then delete_secrets; fi
  say "kept: the Firestore (default) database; its ledger records expire by TTL, or run"
  say "  gcloud firestore bulk-delete --collection-ids=$LEDGER_COLLECTION --project=$PROJECT"
  ((FAILURES == 0)) || die "$FAILURES step(s) failed, see above; run teardown again when fixed"
}

confirm() {
  if ((DRY_RUN || ASSUME_YES)); then return 0; fi
  [[ -t 0 ]] || die "refusing to delete without --yes (stdin is not a terminal)"
  local answer
  read -r -p "Delete the gateway from project $PROJECT? Type the project id to confirm: " answer
  [[ $answer == "$PROJECT" ]] || die "not confirmed; nothing deleted"
}

# Policies first: a channel that a policy names cannot be deleted. A dashboard or policy is found by
# its display name (a dry run shows one of each); only a channel deploy created (its user label) goes.
delete_monitoring() {
  say "alert policies, the notification channel deploy created, the dashboard, log-based metrics"
  local kind name id metrics=()
  while IFS=$'\t' read -r kind name; do
    case $kind in
      metric) metrics+=("$name") ;;
      policy)
        for id in $(monitoring_lookup policy "$name" "DRY_RUN_POLICY"); do
          gc_try alpha monitoring policies delete "$id" --quiet
        done ;;
      dashboard)
        for id in $(monitoring_lookup dashboard "$name" "DRY_RUN_DASHBOARD"); do
          gc_try monitoring dashboards delete "$id" --quiet
        done ;;
    esac
  done < <(monitoring_names)
  for id in $(gc_value "projects/$PROJECT/notificationChannels/DRY_RUN" beta monitoring channels list \
    "--filter=userLabels.gateway_deploy=\"$NAME_PREFIX\"" '--format=value(name)'); do
    gc_try beta monitoring channels delete "$id" --force --quiet
  done
  for name in "${metrics[@]}"; do
    gc_try logging metrics delete "$name" --quiet
  done
}

delete_functions() {
  say "functions, with their Eventarc triggers and trigger subscriptions"
  local fn
  for fn in "${FUNCTIONS[@]}"; do
    gc_try functions delete "$(function_name "$fn")" --gen2 --region="$REGION" --quiet
  done
}

# What deploy/deploy-subscriber.sh made under its default name (a subscriber deployed with --name:
# deploy-subscriber.sh --name NAME --delete): the push subscription and the function; its identity
# goes with the service accounts.
delete_subscriber() {
  local name="$NAME_PREFIX-subscriber"
  say "event subscriber $name (deploy/deploy-subscriber.sh), if any"
  gc_try pubsub subscriptions delete "$name-push" --quiet
  gc_try functions delete "$name" --gen2 --region="$REGION" --quiet
}

delete_topics() {
  say "dead-letter subscriptions and topics (undelivered messages are lost)"
  gc_try pubsub subscriptions delete "$JOBS_DEAD_LETTER_SUB" --quiet
  gc_try pubsub subscriptions delete "$REQUESTS_DEAD_LETTER_SUB" --quiet
  local topic
  for topic in "${TOPICS[@]}"; do
    gc_try pubsub topics delete "$topic" --quiet
  done
}

# Bindings on the project and on kept secrets would outlive the accounts as "deleted:" members.
revoke_runtime_roles() {
  say "IAM bindings of the runtime service accounts"
  if [[ -z $BUILD_SERVICE_ACCOUNT ]]; then build_bindings remove gc_try; fi
  if ((DELETE_SECRETS)); then runtime_bindings remove gc_try project; else runtime_bindings remove gc_try; fi
}

delete_service_accounts() {
  say "service accounts"
  local role
  for role in "${SERVICE_ACCOUNT_ROLES[@]}" sub; do  # sub: deploy-subscriber.sh's subscribers
    gc_try iam service-accounts delete "$(sa_email "$role")" --quiet
  done
}

delete_secrets() {
  say "secrets (--delete-secrets): their values cannot be recovered"
  local name
  for name in "${ALL_SECRET_NAMES[@]}"; do
    gc_try secrets delete "$name" --quiet
  done
}

main "$@"
