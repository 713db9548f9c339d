#!/bin/sh
# The app of the local stack: four streaming requests at a time through intact's socket,
# forever, so that the dashboards have something to show.
set -u
stream() {
  while :; do
    curl --silent --show-error --no-buffer --max-time 120 \
      --unix-socket /run/intact/intact.sock http://intact/v1/chat/completions \
      -H 'Content-Type: application/json' \
      -d '{"model": "sim-1:mixed", "stream": true, "messages": [{"role": "user", "content": "Tell me about streams."}]}' \
      > /dev/null || sleep 1
  done
}
for _ in 1 2 3 4; do stream & done
wait
