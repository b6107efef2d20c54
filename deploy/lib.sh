# Shared by deploy.sh, teardown.sh and replay-dead-letters.sh: options, settings, naming,
# and the one place a gcloud command is built and issued (printed under --dry-run).
# Sourced, not run. Bash 4+.

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$DEPLOY_DIR/.." && pwd)
DRY_RUN=0
ENV_FILE="$DEPLOY_DIR/env"
# What an existence probe answers under --dry-run: deploy shows the creates, teardown the deletes.
DRY_RUN_ASSUME=absent
FAILURES=0

# The dry-run listing goes to the caller's stdout even from inside $(...).
exec 3>&1
# Deletes and IAM changes must never wait on a prompt nobody sees.
export CLOUDSDK_CORE_DISABLE_PROMPTS=1

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
say() { if ((DRY_RUN)); then printf '# %s\n' "$*" >&3; else printf '==> %s\n' "$*" >&2; fi; }

# Print an argv so it can be pasted into a shell (and split back by shlex).
quote_argv() {
  local out=() arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# The one place a gcloud command is built and issued. MODE:
#   run       run it; the script stops if it fails
#   retry     like run, retried a few times (IAM on a service account created seconds ago)
#   exists    run it quietly; true when it succeeds (a describe probe)
#   value:D   run it and print its stdout (a lookup); D is printed instead under --dry-run
#   try       run it; a failure is reported, counted and skipped (teardown)
gcloud_cmd() {
  local mode=$1
  shift
  local argv=(gcloud "$@" "--project=$PROJECT")
  if ((DRY_RUN)); then
    quote_argv "${argv[@]}" >&3
    case $mode in
      exists) [[ $DRY_RUN_ASSUME == present ]] ;;
      value:*) printf '%s\n' "${mode#value:}" ;;
    esac
    return
  fi
  case $mode in
    exists) "${argv[@]}" >/dev/null 2>&1 ;;
    value:*) "${argv[@]}" ;;
    run) quote_argv + "${argv[@]}" >&2; "${argv[@]}" ;;
    retry) quote_argv + "${argv[@]}" >&2; run_with_retries "${argv[@]}" ;;
    try) quote_argv + "${argv[@]}" >&2; run_or_report "${argv[@]}" ;;
    *) die "gcloud_cmd: unknown mode $mode" ;;
  esac
}

gc() { gcloud_cmd run "$@"; }
gc_retry() { gcloud_cmd retry "$@"; }
gc_exists() { gcloud_cmd exists "$@"; }
gc_try() { gcloud_cmd try "$@"; }
gc_value() { local default=$1; shift; gcloud_cmd "value:$default" "$@"; }

# A service account is visible to IAM some seconds after its creation: retry, don't fail.
run_with_retries() {
  local attempt
  for attempt in 1 2 3 4 5; do
    "$@" && return 0
    ((attempt < 5)) && { printf '   (retrying in %ss)\n' $((attempt * 5)) >&2; sleep $((attempt * 5)); }
  done
  return 1
}

# Teardown keeps going: "not found" means already gone, anything else is counted.
run_or_report() {
  local err
  if err=$("$@" 2>&1 >/dev/null); then return 0; fi
  if grep -qiE 'not.?found|does not exist|NOT_FOUND' <<<"$err"; then
    printf '   (already gone)\n' >&2
  else
    printf '%s\n' "$err" >&2
    FAILURES=$((FAILURES + 1))
  fi
  return 0
}

# Handle one shared option at "$@" (--env FILE, --dry-run, --help); set SHIFT to the number
# of words it used, or return 1 for an option this helper does not know.
common_option() {
  case $1 in
    --env) [[ $# -ge 2 ]] || die "--env needs a file"; ENV_FILE=$2; SHIFT=2 ;;
    --env=*) ENV_FILE=${1#--env=}; SHIFT=1 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    -h | --help) usage; exit 0 ;;
    *) return 1 ;;
  esac
}

# Source the settings file, apply defaults, and report every missing setting at once.
load_settings() {
  [[ -f $ENV_FILE ]] || die "settings file $ENV_FILE not found: cp deploy/env.example deploy/env and edit it"
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  : "${NAME_PREFIX:=gateway}"
  : "${RUNTIME:=python311}"
  : "${SOURCE_DIR:=$REPO_ROOT}"
  : "${FIRESTORE_LOCATION:=}"
  : "${GATEWAY_SCHEMAS_DIR:=schemas}"
  : "${GATEWAY_JOBS_TOPIC:=workflow-jobs}"
  : "${GATEWAY_EVENTS_TOPIC:=workflow-job-events}"
  : "${GATEWAY_REQUESTS_TOPIC:=workflow-requests}"
  : "${GATEWAY_LEDGER:=firestore://deliveries}"
  : "${GATEWAY_MAX_BODY_BYTES:=1048576}"
  : "${GATEWAY_POLL_INLINE_S:=5}"
  : "${GATEWAY_SUBMIT_INLINE_S:=2}"
  : "${TASKS_LOCATION:=$REGION}"
  : "${TASKS_QUEUE:=${NAME_PREFIX:-gateway}-poll-checks}"
  : "${TASKS_MIN_BACKOFF:=10s}"
  : "${TASKS_MAX_BACKOFF:=600s}"
  : "${TASKS_MAX_DOUBLINGS:=5}"
  : "${TASKS_MAX_ATTEMPTS:=200}"
  : "${TASKS_MAX_DISPATCHES_PER_SECOND:=50}"
  : "${TASKS_MAX_CONCURRENT_DISPATCHES:=400}"
  : "${JOBS_DEAD_LETTER_TOPIC:=${GATEWAY_JOBS_TOPIC}-dead-letter}"
  : "${REQUESTS_DEAD_LETTER_TOPIC:=${GATEWAY_REQUESTS_TOPIC}-dead-letter}"
  : "${DEAD_LETTER_SUBSCRIPTION_SUFFIX:=-kept}"
  : "${JOBS_MAX_DELIVERY_ATTEMPTS:=100}"
  : "${REQUESTS_MAX_DELIVERY_ATTEMPTS:=20}"
  : "${SWEEP_SCHEDULE:=*/5 * * * *}"
  : "${CARTO_CLIENT_ID:=}"
  : "${EXTRA_ENV_VARS:=}"
  : "${BUILD_SERVICE_ACCOUNT:=}"
  : "${WEBHOOK_ACCESS:=public}"
  : "${GATEWAY_OPERATORS:=}"
  : "${SECRET_VERSIONS:=}"
  : "${CONSOLE_INVOKERS:=}"
  # Instances (deploy/env.example says why each default).
  : "${WEBHOOK_MIN_INSTANCES:=0}"
  : "${WEBHOOK_MAX_INSTANCES:=20}"
  : "${POLL_MAX_INSTANCES:=20}"
  : "${SUBMIT_MAX_INSTANCES:=10}"
  : "${SWEEP_MAX_INSTANCES:=1}"
  # Alerts (README, "Operating it").
  : "${ALERT_EMAIL:=}"
  : "${ALERT_CHANNEL:=}"
  : "${ALERT_FAILED_RATIO:=0.2}"
  : "${ALERT_FAILED_WINDOW_S:=3600}"
  : "${ALERT_WEBHOOK_5XX_RATIO:=0.05}"
  : "${ALERT_WEBHOOK_5XX_WINDOW_S:=300}"
  : "${ALERT_TRACKING_AGE_MIN:=15}"
  : "${ALERT_REDRIVES_PER_HOUR:=20}"
  : "${ALERT_QUEUED_WAIT_S:=900}"
  local missing=() name
  for name in PROJECT REGION CARTO_API_BASE_URL; do
    [[ -n ${!name:-} ]] || missing+=("$name")
  done
  ((${#missing[@]} == 0)) || die "missing in $ENV_FILE: ${missing[*]}"
  [[ $GATEWAY_LEDGER =~ ^firestore://([A-Za-z0-9][A-Za-z0-9_.-]*)(\?database=([a-z][a-z0-9-]*))?$ ]] \
    || die "GATEWAY_LEDGER must be firestore://COLLECTION[?database=NAME] in the cloud, got $GATEWAY_LEDGER"
  LEDGER_COLLECTION=${BASH_REMATCH[1]}
  LEDGER_DATABASE=${BASH_REMATCH[3]:-(default)}
  [[ $TASKS_QUEUE =~ ^[A-Za-z0-9-]{1,100}$ ]] || die "TASKS_QUEUE must be 1-100 letters, digits or dashes, got $TASKS_QUEUE"
  GATEWAY_TASKS_QUEUE="projects/$PROJECT/locations/${TASKS_LOCATION:-$REGION}/queues/$TASKS_QUEUE"
  [[ $NAME_PREFIX =~ ^[a-z][a-z0-9-]{1,20}$ ]] \
    || die "NAME_PREFIX must be 2-21 lower-case letters, digits or dashes (it prefixes service account ids)"
  [[ -z $GATEWAY_OPERATORS || $GATEWAY_OPERATORS =~ ^[^@,\;[:space:]]+@[^@,\;[:space:]]+(,[^@,\;[:space:]]+@[^@,\;[:space:]]+)*$ ]] \
    || die "GATEWAY_OPERATORS must be comma-separated email addresses, got $GATEWAY_OPERATORS"
  for name in WEBHOOK_MIN_INSTANCES WEBHOOK_MAX_INSTANCES POLL_MAX_INSTANCES SUBMIT_MAX_INSTANCES SWEEP_MAX_INSTANCES \
    ALERT_FAILED_WINDOW_S ALERT_WEBHOOK_5XX_WINDOW_S ALERT_TRACKING_AGE_MIN ALERT_REDRIVES_PER_HOUR ALERT_QUEUED_WAIT_S; do
    [[ ${!name} =~ ^[0-9]+$ ]] || die "$name must be a whole number, got ${!name}"
  done
  for name in ALERT_FAILED_RATIO ALERT_WEBHOOK_5XX_RATIO; do
    [[ ${!name} =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] || die "$name must be a share between 0 and 1, got ${!name}"
  done
  ((WEBHOOK_MAX_INSTANCES >= 1 && WEBHOOK_MIN_INSTANCES <= WEBHOOK_MAX_INSTANCES)) \
    || die "WEBHOOK_MIN_INSTANCES ($WEBHOOK_MIN_INSTANCES) must not exceed WEBHOOK_MAX_INSTANCES ($WEBHOOK_MAX_INSTANCES)"
  [[ -z $ALERT_EMAIL || $ALERT_EMAIL =~ ^[^@,\;[:space:]\"]+@[^@,\;[:space:]\"]+$ ]] || die "ALERT_EMAIL must be one email address, got $ALERT_EMAIL"
  [[ -z $ALERT_CHANNEL || $ALERT_CHANNEL =~ ^projects/[^/]+/notificationChannels/[0-9A-Za-z_-]+$ ]] \
    || die "ALERT_CHANNEL must be projects/PROJECT/notificationChannels/ID, got $ALERT_CHANNEL"
  [[ $WEBHOOK_ACCESS == public || $WEBHOOK_ACCESS == no-invoker-iam-check ]] \
    || die "WEBHOOK_ACCESS must be public or no-invoker-iam-check, got $WEBHOOK_ACCESS"
  [[ -z $BUILD_SERVICE_ACCOUNT || $BUILD_SERVICE_ACCOUNT =~ ^[^@[:space:]]+@[^@[:space:]]+$ ]] \
    || die "BUILD_SERVICE_ACCOUNT must be a service account's email, got $BUILD_SERVICE_ACCOUNT"
  parse_secret_versions
  set_names
}

# Names derived from the settings, used by deploy and teardown alike.
set_names() {
  FUNCTIONS=(webhook poll submit sweep console)
  TASK_SCHEDULERS=(webhook poll submit sweep)  # the functions that enqueue status checks or submit hand-offs
  SCHEDULER_JOB="$NAME_PREFIX-sweep"
  JOBS_DEAD_LETTER_SUB="$JOBS_DEAD_LETTER_TOPIC$DEAD_LETTER_SUBSCRIPTION_SUFFIX"
  REQUESTS_DEAD_LETTER_SUB="$REQUESTS_DEAD_LETTER_TOPIC$DEAD_LETTER_SUBSCRIPTION_SUFFIX"
  TOPICS=("$GATEWAY_JOBS_TOPIC" "$GATEWAY_EVENTS_TOPIC" "$GATEWAY_REQUESTS_TOPIC"
    "$JOBS_DEAD_LETTER_TOPIC" "$REQUESTS_DEAD_LETTER_TOPIC")
  # Runtime identities (one per function), the scheduler's and the Eventarc triggers'.
  SERVICE_ACCOUNT_ROLES=(webhook poll submit sweep console scheduler trigger)
  # Cloud Build's identity for the functions' builds: ours unless BUILD_SERVICE_ACCOUNT names one.
  [[ -n $BUILD_SERVICE_ACCOUNT ]] || SERVICE_ACCOUNT_ROLES+=(build)
}
# What a build needs (https://cloud.google.com/functions/docs/securing/build-custom-sa): the builder
# role, build logs, the image in Artifact Registry, and reading the uploaded source.
BUILD_ROLES=(roles/cloudbuild.builds.builder roles/logging.logWriter roles/artifactregistry.writer
  roles/storage.objectViewer)
build_sa_email() { printf '%s\n' "${BUILD_SERVICE_ACCOUNT:-$(sa_email build)}"; }
build_sa_flag() { printf -- '--build-service-account=projects/%s/serviceAccounts/%s\n' "$PROJECT" "$(build_sa_email)"; }
function_name() { printf '%s-%s\n' "$NAME_PREFIX" "$1"; }
sa_email() { printf '%s-%s@%s.iam.gserviceaccount.com\n' "$NAME_PREFIX" "$1" "$PROJECT"; }
sa_member() { printf 'serviceAccount:%s\n' "$(sa_email "$1")"; }

# SECRET_VERSIONS=VAR=SECRET:VERSION,... : which Secret Manager secret and version a variable reads
# (rotation: two variables, two versions of one secret). Every other variable reads VAR:latest.
declare -A SECRET_SOURCE=()
parse_secret_versions() {
  local item
  local -a items
  IFS=, read -r -a items <<<"$SECRET_VERSIONS"
  for item in "${items[@]}"; do
    [[ $item =~ ^([A-Za-z_][A-Za-z0-9_]*)=([A-Za-z0-9_-]+):(latest|[1-9][0-9]*)$ ]] \
      || die "SECRET_VERSIONS must be VARIABLE=SECRET:VERSION,... (VERSION a number or latest), got $item"
    SECRET_SOURCE[${BASH_REMATCH[1]}]="${BASH_REMATCH[2]}:${BASH_REMATCH[3]}"
  done
}
secret_source() { printf '%s\n' "${SECRET_SOURCE[$1]:-$1:latest}"; }
secret_name() { local source; source=$(secret_source "$1"); printf '%s\n' "${source%%:*}"; }
# The Secret Manager secrets behind some variables, each once.
secret_names() {
  local name
  for name in "$@"; do secret_name "$name"; done | sort -u
}

# The Secret Manager secret holding the operator tokens of /jobs and /openapi.json (webhook only).
OPERATOR_SECRET_ENV=GATEWAY_OPERATOR_TOKENS

# Env var names of the CARTO credentials the deployment itself uses (README, "Settings").
carto_secret_envs() {
  if [[ -n $CARTO_CLIENT_ID ]]; then echo CARTO_CLIENT_SECRET; else echo CARTO_API_TOKEN; fi
}

# Secret env vars named by the workflow files, as "auth NAME" (webhook secrets and tokens)
# or "carto NAME" (a workflow's own CARTO token): adding a workflow needs no script change.
workflow_secret_envs() {
  python3 - "$SOURCE_DIR/$GATEWAY_SCHEMAS_DIR/workflows" <<'PY'
import json, pathlib, re, sys

def env_refs(value):
    """Every env:NAME string anywhere inside value."""
    if isinstance(value, str):
        for ref in value.split():
            if ref.startswith("env:"):
                yield ref[4:]
    elif isinstance(value, dict):
        for item in value.values():
            yield from env_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from env_refs(item)

found = set()
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        workflow = json.loads(path.read_text())
    except ValueError as exc:
        sys.exit(f"{path}: not JSON: {exc}")
    for kind, section in (("auth", workflow.get("auth")), ("carto", workflow.get("carto"))):
        for name in env_refs(section):
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
                sys.exit(f"{path}: env:{name} is not an UPPER_SNAKE environment variable name")
            found.add((kind, name))
for kind, name in sorted(found):
    print(kind, name)
PY
}

# The longest tracking.deadline_s of the workflow files (their default: 6 h): a check task keeps being
# retried at least that long while poll answers 5xx (CARTO or Cloud Tasks down).
longest_deadline_s() {
  python3 - "$SOURCE_DIR/$GATEWAY_SCHEMAS_DIR/workflows" <<'PY'
import json, pathlib, sys

deadlines = [21600]
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        tracking = json.loads(path.read_text()).get("tracking") or {}
    except (ValueError, AttributeError) as exc:
        sys.exit(f"{path}: not a workflow file: {exc}")
    deadline = tracking.get("deadline_s", 21600) if isinstance(tracking, dict) else 21600
    if isinstance(deadline, int) and not isinstance(deadline, bool):
        deadlines.append(deadline)
print(max(deadlines))
PY
}

# The non-empty arguments, sorted, each once.
unique_lines() {
  local item
  for item in "$@"; do
    if [[ -n $item ]]; then printf '%s\n' "$item"; fi
  done | sort -u
}

# Deploying no workflow is a mistake (a fresh clone holds none; the demos of examples/ never deploy).
require_workflows() {
  local folder="$SOURCE_DIR/$GATEWAY_SCHEMAS_DIR/workflows"
  compgen -G "$folder/*.json" >/dev/null \
    || die "no workflow file in $GATEWAY_SCHEMAS_DIR/workflows/: write yours first with \`python -m gateway new NAME\` (README, \"Workflow files\"); the demos of examples/workflows/ are never deployed"
}

# Fill AUTH_SECRET_ENVS, CARTO_SECRET_ENVS (deployment + per-workflow) and ALL_SECRET_ENVS.
collect_secrets() {
  local listing kind name
  listing=$(workflow_secret_envs) || die "cannot read the workflow definitions"
  AUTH_SECRET_ENVS=()
  mapfile -t CARTO_SECRET_ENVS < <(carto_secret_envs)
  while read -r kind name; do
    [[ -n $kind ]] || continue
    if [[ $kind == auth ]]; then AUTH_SECRET_ENVS+=("$name"); else CARTO_SECRET_ENVS+=("$name"); fi
  done <<<"$listing"
  mapfile -t ALL_SECRET_ENVS < <(unique_lines "${CARTO_SECRET_ENVS[@]}" "${AUTH_SECRET_ENVS[@]}" "$OPERATOR_SECRET_ENV")
  local pinned
  for pinned in "${!SECRET_SOURCE[@]}"; do
    printf '%s\n' "${ALL_SECRET_ENVS[@]}" | grep -qx "$pinned" \
      || die "SECRET_VERSIONS names $pinned, which no workflow file references"
  done
  mapfile -t ALL_SECRET_NAMES < <(secret_names "${ALL_SECRET_ENVS[@]}")
}

# Which secret env vars a function reads. Only `webhook` verifies senders and serves operators, so
# only it gets the webhook secrets and the operator tokens; poll, submit, sweep and console load the
# registry without them (main.py: App.from_env(verify_senders=False)) and read the CARTO credentials alone.
function_secret_envs() {
  if [[ ${1:-} == webhook ]]; then
    unique_lines "${CARTO_SECRET_ENVS[@]}" "${AUTH_SECRET_ENVS[@]}" "$OPERATOR_SECRET_ENV"
  else
    unique_lines "${CARTO_SECRET_ENVS[@]}"
  fi
}

# The roles deploy grants (VERB add) and teardown takes back (VERB remove), each through its RUNNER:
# gc_retry (deploy) or gc_try (teardown goes on past a failure).
# One role on the project: unconditional when granted; every condition of it when taken back.
project_binding() {
  local verb=$1 run=$2 member=$3 role=$4 scope=--condition=None
  [[ $verb == add ]] || scope=--all
  "$run" projects "$verb-iam-policy-binding" "$PROJECT" --member="$member" --role="$role" "$scope" --format=none
}

# `build_bindings VERB RUNNER`: what a build needs, for the gateway's build account.
build_bindings() {
  local role
  for role in "${BUILD_ROLES[@]}"; do project_binding "$1" "$2" "serviceAccount:$(build_sa_email)" "$role"; done
}

# `runtime_bindings VERB RUNNER [project]`: each function's account reads the ledger and the secrets it is
# given (function_secret_envs); with `project`, the ledger's role alone. Firestore has no per-collection
# IAM: datastore.user on the project is the narrowest role that reads and writes documents.
runtime_bindings() {
  local verb=$1 run=$2 fn name
  for fn in "${FUNCTIONS[@]}"; do
    project_binding "$verb" "$run" "$(sa_member "$fn")" roles/datastore.user
    [[ ${3:-} != project ]] || continue
    for name in $(secret_names $(function_secret_envs "$fn")); do
      "$run" secrets "$verb-iam-policy-binding" "$name" --member="$(sa_member "$fn")" \
        --role=roles/secretmanager.secretAccessor --format=none
    done
  done
}

# What deploy creates from the monitoring configs: "metric<TAB>ID", "dashboard<TAB>TITLE" and
# "policy<TAB>TITLE" lines (deploy/monitoring.py).
monitoring_names() {
  python3 "$DEPLOY_DIR/monitoring.py" names "NAME_PREFIX=$NAME_PREFIX" || die "cannot read the monitoring configs"
}

# The ids of the dashboards (KIND dashboard) or alert policies (policy) titled TITLE; DEFAULT is what a
# dry run prints instead. Display names are not unique: each match is one line.
monitoring_lookup() {
  local kind=$1 title=$2 default=$3
  local filter="--filter=displayName=\"${title//\"/\\\"}\""
  if [[ $kind == dashboard ]]; then
    gc_value "$default" monitoring dashboards list "$filter" '--format=value(name.basename())'
  else
    gc_value "$default" alpha monitoring policies list "$filter" '--format=value(name.basename())'
  fi
}
