#!/usr/bin/env bash
# Create or update the gateway on Google Cloud. Idempotent: run it again after any change.
# Order: APIs, topics and dead letters, service accounts, secrets, IAM, Firestore ledger and the
# console's indexes, the Cloud Tasks queue of the status checks and submit hand-offs, the five
# functions (poll first: its URL, the tasks' target, is known once poll exists), invokers, the tracking/requests retry policies,
# the sweep schedule, then monitoring: log-based metrics, the dashboard, the alert policies and
# their notification channel.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
usage: deploy/deploy.sh [--env FILE] [--dry-run]

  --env FILE   settings file (default deploy/env; start from deploy/env.example)
  --dry-run    print every gcloud command instead of running it (no credentials needed)

A secret with no value yet takes it from the environment variable of the same name, e.g.
  CARTO_API_TOKEN=... MY_STORES_SECRET=whsec_... GATEWAY_OPERATOR_TOKENS=... deploy/deploy.sh
EOF
}

REQUIRED_APIS=(
  cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com
  artifactregistry.googleapis.com eventarc.googleapis.com pubsub.googleapis.com
  secretmanager.googleapis.com firestore.googleapis.com cloudscheduler.googleapis.com
  iam.googleapis.com logging.googleapis.com cloudtasks.googleapis.com monitoring.googleapis.com
)

main() {
  while (($#)); do
    common_option "$@" || die "unknown option: $1 (see --help)"
    shift "$SHIFT"
  done
  load_settings
  ((DRY_RUN)) || command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud SDK"
  require_workflows
  collect_secrets
  function_env_vars webhook >/dev/null  # every setting checked before anything is created
  say "gateway deploy to project $PROJECT, region $REGION"
  gc services enable "${REQUIRED_APIS[@]}"
  PUBSUB_AGENT=$(pubsub_service_agent)
  create_topics
  create_service_accounts
  grant_build_roles
  create_secrets
  grant_runtime_roles
  create_firestore_ledger
  create_console_indexes
  create_tasks_queue
  grant_task_roles
  deploy_functions
  grant_invokers
  apply_retry_policy poll "$JOBS_DEAD_LETTER_TOPIC" "$JOBS_MAX_DELIVERY_ATTEMPTS"
  apply_retry_policy submit "$REQUESTS_DEAD_LETTER_TOPIC" "$REQUESTS_MAX_DELIVERY_ATTEMPTS"
  schedule_sweep
  create_monitoring
  report
}

# Pub/Sub's own identity: it moves dead letters and signs the push requests of the triggers.
pubsub_service_agent() {
  local number
  number=$(gc_value PROJECT_NUMBER projects describe "$PROJECT" '--format=value(projectNumber)')
  printf 'serviceAccount:service-%s@gcp-sa-pubsub.iam.gserviceaccount.com\n' "$number"
}

create_topics() {
  say "Pub/Sub topics (tracking, events, requests, dead letters); created if absent"
  local topic
  for topic in "${TOPICS[@]}"; do
    gc_exists pubsub topics describe "$topic" || gc pubsub topics create "$topic"
  done
  say "subscriptions that keep dead letters until someone replays or drops them"
  keep_dead_letters "$JOBS_DEAD_LETTER_SUB" "$JOBS_DEAD_LETTER_TOPIC"
  keep_dead_letters "$REQUESTS_DEAD_LETTER_SUB" "$REQUESTS_DEAD_LETTER_TOPIC"
}

keep_dead_letters() {
  local subscription=$1 topic=$2
  gc_exists pubsub subscriptions describe "$subscription" \
    || gc pubsub subscriptions create "$subscription" --topic="$topic" \
      --message-retention-duration=7d --expiration-period=never --ack-deadline=60
}

create_service_accounts() {
  say "service accounts, one per identity, created if absent"
  local role
  for role in "${SERVICE_ACCOUNT_ROLES[@]}"; do
    gc_exists iam service-accounts describe "$(sa_email "$role")" \
      || gc iam service-accounts create "$NAME_PREFIX-$role" \
        --display-name="Workflow gateway: $role"
  done
}

create_secrets() {
  say "Secret Manager secrets: CARTO's, the workflows' auth, the operator tokens (SECRET_VERSIONS may map two variables to one)"
  local name missing=()
  for name in "${ALL_SECRET_NAMES[@]}"; do
    gc_exists secrets describe "$name" || gc secrets create "$name" --replication-policy=automatic
    if has_secret_value "$name"; then continue; fi
    if ((DRY_RUN)) || [[ -n ${!name:-} ]]; then
      add_first_secret_value "$name"
    else
      missing+=("$name")
    fi
  done
  ((${#missing[@]} == 0)) || die "$(missing_secrets_message "${missing[@]}")"
}

has_secret_value() {
  local version
  version=$(gc_value "" secrets versions list "$1" --filter=state:enabled --limit=1 '--format=value(name)')
  [[ -n $version ]]
}

# The first value comes from the deployer's environment variable of the same name, through
# stdin: a secret never appears on a command line or in the settings file.
add_first_secret_value() {
  local name=$1
  if ((DRY_RUN)); then
    say "only if $name has no enabled version yet; the value is read from \$$name on stdin"
    gc secrets versions add "$name" --data-file=-
  else
    printf '%s' "${!name}" | gc secrets versions add "$name" --data-file=-
  fi
}

missing_secrets_message() {
  local name
  printf 'these secrets have no value yet; add each, then deploy again:\n'
  for name in "$@"; do
    printf "  printf %%s 'VALUE' | gcloud secrets versions add %s --data-file=- --project=%s\n" "$name" "$PROJECT"
  done
  printf '(or export %s in the environment of deploy.sh)' "$*"
}

# Least roles: each function publishes only where it must and reads only the secrets it is
# given (runtime_bindings, deploy/lib.sh).
grant_runtime_roles() {
  say "IAM for the runtime service accounts"
  runtime_bindings add gc_retry
  # console: a re-run publishes its tracking message, a cancel its completion event.
  grant_publishers "$GATEWAY_JOBS_TOPIC" webhook submit poll sweep console
  # webhook: DELETE /jobs/{id} publishes the cancelled job's event.
  grant_publishers "$GATEWAY_EVENTS_TOPIC" webhook poll sweep console
}

# Builds run as their own identity: since 2024 Cloud Build's default one (the Compute Engine default
# account) is no longer an Editor in new organisations, and its warning is a prompt this script turns off.
grant_build_roles() {
  [[ -z $BUILD_SERVICE_ACCOUNT ]] || { say "builds run as $BUILD_SERVICE_ACCOUNT (its roles are yours to grant)"; return; }
  say "IAM for the build service account"
  build_bindings add gc_retry
}

grant_publishers() {
  local topic=$1 fn
  shift
  for fn in "$@"; do
    gc_retry pubsub topics add-iam-policy-binding "$topic" --member="$(sa_member "$fn")" \
      --role=roles/pubsub.publisher --format=none
  done
}

# The ledger (docs/architecture.md, "Invariants"): a native-mode database whose records expire by TTL. Fields that are
# never queried are exempt from indexing: large ones, and the timestamps: an indexed field whose
# values only grow limits writes to the collection to about 500 per second
# (https://cloud.google.com/firestore/docs/best-practices#high_read_write_and_delete_rates_to_a_narrow_document_range).
# The queries use job_id (find_job), delivery_id (find_delivery), sweep_at (stale) and created_at
# (the console's list, newest first): those keep their automatic indexes.
UNINDEXED_LEDGER_FIELDS=(expires_at parameters parameter_sources query error last_answer result
  updated_at submitted_at deadline_at last_check_at finished_at queued_at)

create_firestore_ledger() {
  say "Firestore database $LEDGER_DATABASE (native mode), ledger collection $LEDGER_COLLECTION"
  local database=--database=$LEDGER_DATABASE group=--collection-group=$LEDGER_COLLECTION
  local kind overridden ttl field
  if gc_exists firestore databases describe "$database"; then
    kind=$(gc_value FIRESTORE_NATIVE firestore databases describe "$database" '--format=value(type)')
    [[ $kind == FIRESTORE_NATIVE ]] || die "Firestore database $LEDGER_DATABASE is $kind; the ledger needs native mode"
  else
    gc firestore databases create "$database" --location="${FIRESTORE_LOCATION:-$REGION}" --type=firestore-native
  fi
  overridden=$(gc_value "" firestore indexes fields list "$group" "$database" '--format=value(name)')
  for field in "${UNINDEXED_LEDGER_FIELDS[@]}"; do
    if ! grep -q "/fields/$field\$" <<<"$overridden"; then
      gc firestore indexes fields update "$field" "$group" "$database" --disable-indexes
    fi
  done
  ttl=$(gc_value "" firestore fields ttls list "$group" "$database" '--format=value(name)')
  if ! grep -q "/fields/expires_at\$" <<<"$ttl"; then
    gc firestore fields ttls update expires_at "$group" "$database" --enable-ttl --async
  fi
}

# The console's list (gateway/ledger/firestore.py, `recent`): equality on some of workflow, outcome and
# state, newest first. Firestore needs one composite index per combination, each ending in created_at
# descending (https://cloud.google.com/firestore/docs/query-data/index-overview#composite_indexes);
# find_job, find_delivery and the unfiltered list use the automatic single-field indexes.
# Keep this list equal to CONSOLE_INDEXES there (tests/test_deploy.py checks).
CONSOLE_INDEXES=("workflow" "outcome" "workflow outcome" "state" "workflow state" "outcome state"
  "workflow outcome state")

# An index has a generated id, so its existence is probed by listing the database's composite indexes
# (one line per index: collection group, then field:ORDER pairs). --async: deploy does not wait for
# the build; until an index is ready, that one filter of the console answers an error page.
create_console_indexes() {
  say "Firestore composite indexes of the console's filtered list, created if absent"
  local database=--database=$LEDGER_DATABASE fields field pairs want existing configs
  for fields in "${CONSOLE_INDEXES[@]}"; do
    pairs=""
    configs=()
    for field in $fields; do
      pairs+="$field:ASCENDING:"
      configs+=("--field-config=field-path=$field,order=ascending")
    done
    want="$LEDGER_COLLECTION"$'\t'"${pairs}created_at:DESCENDING"
    existing=$(gc_value "" firestore indexes composite list "$database" \
      "--format=value(name.segment(-3),fields.map().extract(fieldPath,order).flatten(separator=':'))")
    if ! grep -qxF -e "$want" -e "$want:__name__:DESCENDING" <<<"$existing"; then
      gc firestore indexes composite create "--collection-group=$LEDGER_COLLECTION" "$database" \
        --query-scope=COLLECTION "${configs[@]}" --field-config=field-path=created_at,order=descending --async
    fi
  done
}

# The status checks of running jobs and the submit hand-offs of accepted deliveries that have no job
# yet (one queue: docs/architecture.md, "Admission"): one task per check or hand-off, due at its
# time, POSTed to poll with an OIDC token of poll's identity. The retry config applies when poll
# answers 5xx (the ledger, Pub/Sub or Cloud Tasks unavailable); "still running", "CARTO busy" and "no
# slot" are 2xx and never retried (the next attempt is a new task). Retries go on at least as long as
# the longest workflow deadline; the dispatch limits cap the status and creation calls CARTO sees.
create_tasks_queue() {
  local verb=create longest
  longest=$(longest_deadline_s) || die "cannot read the workflow definitions"
  say "Cloud Tasks queue $TASKS_QUEUE (status checks and submit hand-offs), created or updated"
  if gc_exists tasks queues describe "$TASKS_QUEUE" --location="$TASKS_LOCATION"; then verb=update; fi
  gc tasks queues "$verb" "$TASKS_QUEUE" --location="$TASKS_LOCATION" \
    --max-attempts="$TASKS_MAX_ATTEMPTS" --max-retry-duration="$((longest + 3600))s" \
    --min-backoff="$TASKS_MIN_BACKOFF" --max-backoff="$TASKS_MAX_BACKOFF" --max-doublings="$TASKS_MAX_DOUBLINGS" \
    --max-dispatches-per-second="$TASKS_MAX_DISPATCHES_PER_SECOND" \
    --max-concurrent-dispatches="$TASKS_MAX_CONCURRENT_DISPATCHES"
}

# poll schedules the next check and hands a freed slot on; sweep re-schedules a lost check or
# hand-off; webhook and submit hand off a delivery CARTO could not take at once. All enqueue (on this
# queue only), and all name poll's identity as the tasks' OIDC account, which needs actAs on it.
grant_task_roles() {
  say "IAM for the check and hand-off tasks: who may enqueue, and act as poll's identity for OIDC"
  local fn
  for fn in "${TASK_SCHEDULERS[@]}"; do
    gc_retry tasks queues add-iam-policy-binding "$TASKS_QUEUE" --location="$TASKS_LOCATION" \
      --member="$(sa_member "$fn")" --role=roles/cloudtasks.enqueuer --format=none
    gc_retry iam service-accounts add-iam-policy-binding "$(sa_email poll)" \
      --member="$(sa_member "$fn")" --role=roles/iam.serviceAccountUser --format=none
  done
}

# Sizes: each poll invocation is one status check (and a short inline wait, GATEWAY_POLL_INLINE_S);
# it serves many checks per instance (concurrency needs cpu >= 1). Its URL, the target of the
# check tasks, exists once poll does: the first deploy sets it right after (poll_url_known).
# Bytecode shipped with the source: without it every new instance compiles the gateway's modules on its
# cold start (about 50 ms on 2 cores). checked-hash .pyc files are checked against the source's hash,
# not its mtime, so the upload's timestamps cannot make them stale. Only when this python3 is the
# runtime's version: the file names carry it, and another version's are never read.
ship_bytecode() {
  local have want=${RUNTIME#python}
  have=$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  if [[ $have != "$want" ]]; then
    say "python3 here is ${have:0:1}.${have:1}, the runtime $RUNTIME: no bytecode shipped (each instance compiles the gateway on its cold start)"
    return 0
  fi
  [[ -d $SOURCE_DIR/gateway ]] || return 0
  say "bytecode of gateway/ for $RUNTIME (checked against the sources' hashes)"
  ((DRY_RUN)) || python3 -m compileall -q -f --invalidation-mode checked-hash -x '/gateway/(local|cli)/' \
    "$SOURCE_DIR/gateway" >/dev/null
}

deploy_functions() {
  say "functions (2nd gen); deploy updates an existing one in place"
  ship_bytecode
  POLL_URL=""
  if gc_exists functions describe "$(function_name poll)" --gen2 --region="$REGION"; then
    POLL_URL=$(function_url poll)
  fi
  local known=$POLL_URL
  deploy_function poll --trigger-topic="$GATEWAY_JOBS_TOPIC" --retry \
    --trigger-service-account="$(sa_email trigger)" \
    --memory=512Mi --cpu=1 --concurrency=40 --timeout=120s --max-instances="$POLL_MAX_INSTANCES"
  if [[ -z $known ]]; then
    POLL_URL=$(function_url poll)
    say "poll's URL is known now: the target of its check tasks (no rebuild)"
    gc run services update "$(function_name poll)" --region="$REGION" \
      --update-env-vars="GATEWAY_POLL_URL=$POLL_URL"
  fi
  # A warm webhook instance (WEBHOOK_MIN_INSTANCES) answers senders with 3-5 s timeouts without a cold start.
  WEBHOOK_URL=$(existing_url webhook)
  deploy_function webhook --trigger-http "$(webhook_access_flag)" \
    --memory=512Mi --cpu=1 --concurrency=40 --timeout=60s \
    --min-instances="$WEBHOOK_MIN_INSTANCES" --max-instances="$WEBHOOK_MAX_INSTANCES"
  [[ -n $WEBHOOK_URL ]] || set_own_url webhook GATEWAY_OPERATOR_AUDIENCES
  open_webhook_without_all_users
  deploy_function submit --trigger-topic="$GATEWAY_REQUESTS_TOPIC" --retry \
    --trigger-service-account="$(sa_email trigger)" \
    --memory=512Mi --cpu=1 --concurrency=20 --timeout=120s --max-instances="$SUBMIT_MAX_INSTANCES"
  deploy_function sweep --trigger-http --no-allow-unauthenticated \
    --memory=512Mi --cpu=1 --concurrency=1 --timeout=300s --max-instances="$SWEEP_MAX_INSTANCES"
  # One instance at most: its CSRF key lives in the instance (gateway/console/csrf.py).
  CONSOLE_URL=$(existing_url console)
  deploy_function console --trigger-http --no-allow-unauthenticated \
    --memory=512Mi --cpu=1 --concurrency=20 --timeout=60s --max-instances=1
  [[ -n $CONSOLE_URL ]] || set_own_url console GATEWAY_CONSOLE_HOSTS
}

# Senders hold no Google credentials: the webhook is public. Where domain-restricted sharing forbids
# the allUsers binding that --allow-unauthenticated adds (gcloud then fails and nothing after webhook
# is deployed), WEBHOOK_ACCESS=no-invoker-iam-check deploys it private and turns Cloud Run's invoker
# check off instead (https://cloud.google.com/run/docs/securing/managing-access#invoker_check).
webhook_access_flag() {
  if [[ $WEBHOOK_ACCESS == public ]]; then echo --allow-unauthenticated; else echo --no-allow-unauthenticated; fi
}

open_webhook_without_all_users() {
  [[ $WEBHOOK_ACCESS == no-invoker-iam-check ]] || return 0
  say "webhook: no allUsers binding (domain-restricted sharing); Cloud Run's invoker IAM check off instead"
  gc run services update "$(function_name webhook)" --region="$REGION" --no-invoker-iam-check
}

# A function's URL, if it exists yet. webhook's is the audience of operators' ID tokens and the
# console's the host it answers: each is set with the other settings once the function exists, and
# right after its first deploy (set_own_url, no rebuild) before that.
existing_url() {
  if gc_exists functions describe "$(function_name "$1")" --gen2 --region="$REGION"; then
    function_url "$1"
  fi
}

set_own_url() {
  local fn=$1 var=$2 url
  url=$(function_url "$fn")
  say "$fn's URL is known now: $var (no rebuild)"
  gc run services update "$(function_name "$fn")" --region="$REGION" --update-env-vars="$var=$url"
}

# THREADS: functions-framework serves with one gunicorn worker of THREADS threads (default 4 per CPU,
# 4 here); Cloud Run sends up to --concurrency requests at once, so an instance serves as many as it
# is sent instead of queueing all but 4 of them.
deploy_function() {
  local fn=$1 env_vars secrets arg threads=""
  shift
  for arg in "$@"; do [[ $arg != --concurrency=* ]] || threads=${arg#--concurrency=}; done
  [[ -n $threads ]] || die "deploy_function $fn: no --concurrency"
  env_vars=$(function_env_vars "$fn")
  if [[ $env_vars == '^;^'* ]]; then env_vars+=";THREADS=$threads"; else env_vars+=",THREADS=$threads"; fi
  secrets=$(function_secrets "$fn")
  gc functions deploy "$(function_name "$fn")" --gen2 --region="$REGION" \
    --runtime="$RUNTIME" --source="$SOURCE_DIR" --entry-point="$fn" \
    --service-account="$(sa_email "$fn")" "$(build_sa_flag)" \
    --set-env-vars="$env_vars" --set-secrets="$secrets" "$@"
}

# The settings of README "Settings": the same for every function, plus the Cloud Tasks settings for
# the functions that enqueue tasks (GATEWAY_POLL_URL once poll exists) and the operators' emails for `webhook`. A list of emails has commas, so then the pairs are joined by ";" (gcloud's alternate
# delimiter, `gcloud topic escaping`).
function_env_vars() {
  local fn=$1
  local pairs=(
    "GOOGLE_CLOUD_PROJECT=$PROJECT"
    "GATEWAY_SCHEMAS_DIR=$GATEWAY_SCHEMAS_DIR"
    "CARTO_API_BASE_URL=$CARTO_API_BASE_URL"
    "GATEWAY_JOBS_TOPIC=$GATEWAY_JOBS_TOPIC"
    "GATEWAY_EVENTS_TOPIC=$GATEWAY_EVENTS_TOPIC"
    "GATEWAY_REQUESTS_TOPIC=$GATEWAY_REQUESTS_TOPIC"
    "GATEWAY_LEDGER=$GATEWAY_LEDGER"
    "GATEWAY_MAX_BODY_BYTES=$GATEWAY_MAX_BODY_BYTES"
    "GATEWAY_POLL_INLINE_S=$GATEWAY_POLL_INLINE_S"
    "GATEWAY_SUBMIT_INLINE_S=$GATEWAY_SUBMIT_INLINE_S"
  )
  [[ -z $CARTO_CLIENT_ID ]] || pairs+=("CARTO_CLIENT_ID=$CARTO_CLIENT_ID")
  if [[ " ${TASK_SCHEDULERS[*]} " == *" $fn "* ]]; then  # the functions that enqueue checks or hand-offs
    pairs+=("GATEWAY_TASKS_QUEUE=$GATEWAY_TASKS_QUEUE" "GATEWAY_TASKS_SERVICE_ACCOUNT=$(sa_email poll)")
    [[ -z ${POLL_URL:-} ]] || pairs+=("GATEWAY_POLL_URL=$POLL_URL")
  fi
  local pair
  for pair in "${pairs[@]}"; do
    [[ $pair != *,* ]] || die "a setting may not contain a comma: ${pair%%=*}"
  done
  if [[ $fn == webhook && -n ${WEBHOOK_URL:-} ]]; then pairs+=("GATEWAY_OPERATOR_AUDIENCES=$WEBHOOK_URL"); fi
  if [[ $fn == console && -n ${CONSOLE_URL:-} ]]; then pairs+=("GATEWAY_CONSOLE_HOSTS=$CONSOLE_URL"); fi
  if [[ $fn == webhook && -n $GATEWAY_OPERATORS ]]; then
    pairs+=("GATEWAY_OPERATORS=$GATEWAY_OPERATORS")
  fi
  if [[ $GATEWAY_OPERATORS == *,* && $fn == webhook ]]; then
    [[ -z $EXTRA_ENV_VARS ]] || pairs+=("${EXTRA_ENV_VARS//,/;}")
    local IFS=';'
    printf '^;^%s\n' "${pairs[*]}"
    return
  fi
  [[ -z $EXTRA_ENV_VARS ]] || pairs+=("$EXTRA_ENV_VARS")
  local IFS=,
  printf '%s\n' "${pairs[*]}"
}

# VAR=SECRET:VERSION for each secret variable the function reads: NAME:latest unless SECRET_VERSIONS
# pins it (rotation); a new instance reads the newest version when it starts.
function_secrets() {
  local refs=() name
  while read -r name; do
    refs+=("$name=$(secret_source "$name")")
  done < <(function_secret_envs "$1")
  local IFS=,
  printf '%s\n' "${refs[*]}"
}

# Who may call the private functions: the Eventarc triggers' identity, poll's own (the OIDC identity
# of its check tasks) and the scheduler's.
grant_invokers() {
  say "invokers of the private functions"
  gc_retry functions add-invoker-policy-binding "$(function_name poll)" --region="$REGION" \
    --member="$(sa_member trigger)"
  gc_retry functions add-invoker-policy-binding "$(function_name poll)" --region="$REGION" \
    --member="$(sa_member poll)"
  gc_retry functions add-invoker-policy-binding "$(function_name submit)" --region="$REGION" \
    --member="$(sa_member trigger)"
  gc_retry functions add-invoker-policy-binding "$(function_name sweep)" --region="$REGION" \
    --member="$(sa_member scheduler)"
  # The operators who may open the console (CONSOLE_INVOKERS in deploy/env: user:, group: or
  # serviceAccount: members, comma-separated).
  # `gcloud run services proxy` reads the service first (run.services.get, not in run.invoker).
  local member
  for member in ${CONSOLE_INVOKERS//,/ }; do
    gc_retry functions add-invoker-policy-binding "$(function_name console)" --region="$REGION" \
      --member="$member"
    gc_retry run services add-iam-policy-binding "$(function_name console)" --region="$REGION" \
      --member="$member" --role=roles/run.viewer --format=none
  done
  revoke_former_console_members
  # Pub/Sub mints the OIDC token of the trigger identity for each push.
  gc_retry iam service-accounts add-iam-policy-binding "$(sa_email trigger)" \
    --member="$PUBSUB_AGENT" --role=roles/iam.serviceAccountTokenCreator --format=none
}

# Someone taken out of CONSOLE_INVOKERS loses both roles on the console: its bindings are read back
# and every member not listed any more is removed. (A dry run pretends one former member.)
revoke_former_console_members() {
  local role members member
  for role in roles/run.invoker roles/run.viewer; do
    members=$(gc_value "user:former-operator@example.com" run services get-iam-policy "$(function_name console)" \
      --region="$REGION" --flatten=bindings[].members "--filter=bindings.role:$role" '--format=value(bindings.members)')
    for member in $members; do
      [[ ",$CONSOLE_INVOKERS," != *",$member,"* ]] || continue
      gc_retry run services remove-iam-policy-binding "$(function_name console)" --region="$REGION" \
        --member="$member" --role="$role" --format=none
    done
  done
}

# The trigger's subscription is created by Eventarc: find it, then set backoff bounds and the
# dead-letter policy (https://cloud.google.com/pubsub/docs/handling-failures).
apply_retry_policy() {
  local fn=$1 dead_letter_topic=$2 attempts=$3 name trigger subscription
  name=$(function_name "$fn")
  say "retry and dead-letter policy of the subscription that triggers $name"
  trigger=$(gc_value "projects/$PROJECT/locations/$REGION/triggers/$name-000000" \
    functions describe "$name" --gen2 --region="$REGION" '--format=value(eventTrigger.trigger)')
  [[ -n $trigger ]] || die "$name has no Eventarc trigger"
  subscription=$(gc_value "projects/$PROJECT/subscriptions/eventarc-$REGION-$name-000000-sub-000" \
    eventarc triggers describe "$trigger" --location="$REGION" \
    '--format=value(transport.pubsub.subscription)')
  [[ -n $subscription ]] || die "the trigger $trigger has no Pub/Sub subscription"
  TRIGGER_SUBSCRIPTIONS[$fn]=${subscription##*/}  # the dashboard's and the alerts' subscription id
  gc pubsub subscriptions update "$subscription" --ack-deadline=600 \
    --min-retry-delay=10s --max-retry-delay=600s \
    --dead-letter-topic="$dead_letter_topic" --max-delivery-attempts="$attempts"
  gc_retry pubsub topics add-iam-policy-binding "$dead_letter_topic" --member="$PUBSUB_AGENT" \
    --role=roles/pubsub.publisher --format=none
  gc_retry pubsub subscriptions add-iam-policy-binding "$subscription" --member="$PUBSUB_AGENT" \
    --role=roles/pubsub.subscriber --format=none
}

declare -A TRIGGER_SUBSCRIPTIONS=()

schedule_sweep() {
  say "Cloud Scheduler job calling sweep with an OIDC token"
  local url verb=create
  url=$(function_url sweep)
  if gc_exists scheduler jobs describe "$SCHEDULER_JOB" --location="$REGION"; then verb=update; fi
  gc scheduler jobs "$verb" http "$SCHEDULER_JOB" --location="$REGION" \
    --schedule="$SWEEP_SCHEDULE" --time-zone=Etc/UTC --uri="$url" --http-method=post \
    --oidc-service-account-email="$(sa_email scheduler)" --oidc-token-audience="$url" \
    --attempt-deadline=320s --description="Re-drive gateway deliveries stuck between states"
}

# Operating it (README, "Operating it"; docs/operating.md): the configs of deploy/metrics,
# deploy/dashboard.json and deploy/alerts rendered with this deployment's names (deploy/monitoring.py),
# then each created or updated. A dry run keeps the rendered files (gcloud reads them) and says where.
create_monitoring() {
  say "monitoring: log-based metrics, the dashboard, alert policies and their notification channel"
  local channels
  channels=$(notification_channels)
  MONITORING_DIR=$(mktemp -d "${TMPDIR:-/tmp}/$NAME_PREFIX-monitoring.XXXXXX")
  if ((DRY_RUN)); then
    say "the rendered configs are kept in $MONITORING_DIR"
  else
    trap 'rm -rf "$MONITORING_DIR"' EXIT
  fi
  python3 "$DEPLOY_DIR/monitoring.py" render "$MONITORING_DIR" "NAME_PREFIX=$NAME_PREFIX" \
    "TRACKING_SUBSCRIPTION=${TRIGGER_SUBSCRIPTIONS[poll]}" "REQUESTS_SUBSCRIPTION=${TRIGGER_SUBSCRIPTIONS[submit]}" \
    "JOBS_DEAD_LETTER_SUB=$JOBS_DEAD_LETTER_SUB" "REQUESTS_DEAD_LETTER_SUB=$REQUESTS_DEAD_LETTER_SUB" \
    "TASKS_QUEUE=$TASKS_QUEUE" "NOTIFICATION_CHANNELS=$channels" \
    "ALERT_FAILED_RATIO=$ALERT_FAILED_RATIO" "ALERT_FAILED_WINDOW_S=$ALERT_FAILED_WINDOW_S" \
    "ALERT_WEBHOOK_5XX_RATIO=$ALERT_WEBHOOK_5XX_RATIO" "ALERT_WEBHOOK_5XX_WINDOW_S=$ALERT_WEBHOOK_5XX_WINDOW_S" \
    "ALERT_TRACKING_AGE_S=$((ALERT_TRACKING_AGE_MIN * 60))" "ALERT_REDRIVES_PER_HOUR=$ALERT_REDRIVES_PER_HOUR" \
    "ALERT_QUEUED_WAIT_S=$ALERT_QUEUED_WAIT_S" >/dev/null || die "cannot render the monitoring configs"
  create_log_metrics
  create_monitoring_config dashboard "$MONITORING_DIR/dashboard.json"
  local file
  for file in "$MONITORING_DIR"/alerts/*.json; do
    create_monitoring_config policy "$file"
  done
}

# The notification channel of the alert policies, as the JSON list they name it in: ALERT_CHANNEL
# as it is, or the email channel of ALERT_EMAIL (created, labelled as deploy's, if absent); none
# when neither is set (the policies still open incidents in the console).
notification_channels() {
  if [[ -n $ALERT_CHANNEL ]]; then
    printf '"%s"\n' "$ALERT_CHANNEL"
    return
  fi
  if [[ -z $ALERT_EMAIL ]]; then
    say "no ALERT_EMAIL nor ALERT_CHANNEL in the settings: alerts open incidents but notify nobody"
    return
  fi
  local name
  name=$(gc_value "" beta monitoring channels list \
    "--filter=type=\"email\" AND labels.email_address=\"$ALERT_EMAIL\"" '--format=value(name)' --limit=1)
  if [[ -z $name ]]; then
    name=$(gc_value "projects/$PROJECT/notificationChannels/DRY_RUN" beta monitoring channels create \
      --display-name="$NAME_PREFIX gateway alerts" --type=email --channel-labels="email_address=$ALERT_EMAIL" \
      --user-labels="gateway_deploy=$NAME_PREFIX" '--format=value(name)')
  fi
  printf '"%s"\n' "$name"
}

create_log_metrics() {
  local kind name verb
  while IFS=$'\t' read -r kind name; do
    [[ $kind == metric ]] || continue
    verb=create
    if gc_exists logging metrics describe "$name"; then verb=update; fi
    gc logging metrics "$verb" "$name" --config-from-file="$MONITORING_DIR/metrics/${name#*/}.yaml"
  done < <(monitoring_names)
}

# A dashboard or an alert policy: found by its display name (its id is generated), updated in place
# or created.
create_monitoring_config() {
  local kind=$1 file=$2 title existing
  title=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["displayName"])' "$file")
  existing=$(monitoring_lookup "$kind" "$title" "")
  existing=${existing%%$'\n'*}
  if [[ $kind == dashboard && -n $existing ]]; then
    gc monitoring dashboards update "$existing" --config-from-file="$file"
  elif [[ $kind == dashboard ]]; then
    gc monitoring dashboards create --config-from-file="$file"
  elif [[ -n $existing ]]; then
    gc alpha monitoring policies update "$existing" --policy-from-file="$file"
  else
    gc alpha monitoring policies create --policy-from-file="$file"
  fi
}

function_url() {
  local name
  name=$(function_name "$1")
  gc_value "https://$name-dry-run.a.run.app" functions describe "$name" --gen2 \
    --region="$REGION" '--format=value(serviceConfig.uri)'
}

report() {
  local url
  url=$(function_url webhook)
  say "done. Webhooks go to $url/hooks/{workflow}"
  say "console: gcloud run services proxy $(function_name console) --region=$REGION --project=$PROJECT --port=8083, then open http://localhost:8083/"
}

main "$@"
