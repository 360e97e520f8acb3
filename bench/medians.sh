#!/usr/bin/env bash
# Prints the median of every number in several `peroxo bench --json` reports, by its path in
# the report, with each run's value so that the spread is visible; then whether each run
# passed, for reports that say. A count missing from a run's report (a tally such as errors by code only lists what
# happened) is 0 in that run.
#
#   bench/medians.sh "peroxo bench dm --rate 1000" run-1.json run-2.json run-3.json
set -euo pipefail
title=$1
shift
echo "== medians of $# runs: $title"
jq -rs '
  . as $runs
  | [$runs[] | [paths(numbers)]] | add
  | reduce .[] as $p ([]; if any(.[]; . == $p) then . else . + [$p] end)
  | .[]
  | . as $path
  | [$runs[] | getpath($path) // 0] as $values
  | ($values | sort | .[(length - 1) / 2 | floor]) as $median
  | "\($path | map(tostring) | join("."))\t\($median)\t(runs: \($values | map(tostring) | join(", ")))"
' "$@" | column -t -s $'\t'
if jq -se 'any(has("passed"))' "$@" >/dev/null; then
  jq -rs '"passed: " + (map(if has("passed") then .passed | tostring else "n/a" end) | join(", "))' \
    "$@"
fi
