#!/usr/bin/env bash
# The same pipeline step over REST, with curl and jq: submit a job idempotently, follow its
# events (server-sent events, resumed after a dropped connection with Last-Event-ID), then
# print the final state and the checkpoints.
#
#   FTD_URL=https://ftd.example.com:8080 FTD_TOKEN=... \
#     examples/pipeline/submit_and_wait.sh job.json "$RUN_ID"
#
# job.json holds the JobSpec (JSON mapping: {"baseModel": ..., "hyperparameters": {...}}).
# Exit status: 0 SUCCEEDED; 1 FAILED or CANCELLED; 2 rejected (the message names the field);
# 3 the coordinator could not be reached. The API is described by $FTD_URL/v1/openapi.json.
set -euo pipefail

spec_file=${1:?usage: submit_and_wait.sh JOB.json REQUEST_ID}
request_id=${2:?usage: submit_and_wait.sh JOB.json REQUEST_ID}
url=${FTD_URL:-http://127.0.0.1:8080}
auth="Authorization: Bearer ${FTD_TOKEN:?set FTD_TOKEN}"
curl_opts=(--silent --show-error --header "$auth" ${FTD_CA_CERT:+--cacert "$FTD_CA_CERT"})

# Answers "<HTTP status>\n<body>"; exit 3 when there is no answer at all.
call() {  # METHOD PATH [BODY]
  local out
  if ! out=$(curl "${curl_opts[@]}" --request "$1" --write-out '\n%{http_code}' \
                  --header 'Content-Type: application/json' ${3:+--data "$3"} "$url$2"); then
    echo "[ftd] cannot reach the coordinator at $url" >&2
    exit 3
  fi
  printf '%s\n%s' "${out##*$'\n'}" "${out%$'\n'*}"
}

# Submit (a retried step with the same request id gets the job the first try created).
body=$(jq -c --arg rid "$request_id" '{spec: ., requestId: $rid}' "$spec_file")
reply=$(call POST /v1/jobs "$body")
status=${reply%%$'\n'*}
reply=${reply#*$'\n'}
if [ "$status" != 200 ]; then
  echo "[ftd] submission rejected ($status): $(jq -r .message <<<"$reply")" >&2
  [ "$status" = 400 ] || [ "$status" = 409 ] && exit 2
  exit 3
fi
job=$(jq -r .job.id <<<"$reply")
echo "[ftd] job $job ($(jq -r .job.status.state <<<"$reply"))"

# Follow the events until the terminal status; after a dropped stream (a coordinator restart),
# reconnect after the last event seen, for up to 5 minutes without news.
last_seq=0
state=""
quiet=0
while [ -z "$state" ]; do
  kind=""
  while IFS= read -r line; do
    case $line in
      "id: "*) last_seq=${line#id: }; quiet=0 ;;
      "event: "*) kind=${line#event: } ;;
      "data: "*)
        data=${line#data: }
        case $kind in
          status)
            s=$(jq -r .status.state <<<"$data")
            echo "[ftd] $s"
            case $s in SUCCEEDED|FAILED|CANCELLED) state=$s ;; esac ;;
          metrics) jq -r '"[ftd] loss \(.metrics.loss)  \(.metrics.tokensPerSecondPerGpu) tokens/s/GPU"' <<<"$data" ;;
          checkpoint) jq -r '"[ftd] checkpoint step \(.checkpoint.step): \(.checkpoint.path)"' <<<"$data" ;;
          error) echo "[ftd] watch: $data" >&2 ;;
        esac ;;
    esac
  done < <(curl "${curl_opts[@]}" --no-buffer --header "Last-Event-ID: $last_seq" \
                "$url/v1/jobs/$job:watch" || true)
  if [ -z "$state" ]; then
    quiet=$((quiet + 1))
    if [ "$quiet" -gt 150 ]; then
      echo "[ftd] lost the coordinator at $url (job $job, last event $last_seq)" >&2
      exit 3
    fi
    sleep 2
    # The coordinator may be back already; a refusal (token, job gone) ends the step.
    reply=$(curl "${curl_opts[@]}" --write-out '\n%{http_code}' "$url/v1/jobs/$job" || true)
    case ${reply##*$'\n'} in
      200|000|5*) ;;
      *) echo "[ftd] watch refused: ${reply%$'\n'*}" >&2; exit 3 ;;
    esac
  fi
done

reply=$(call GET "/v1/jobs/$job/checkpoints")
jq -r '.checkpoints // [] | .[] | "[ftd] checkpoint \(.step) \(.path)"' <<<"${reply#*$'\n'}"
echo "[ftd] job $job $state"
[ "$state" = SUCCEEDED ]
