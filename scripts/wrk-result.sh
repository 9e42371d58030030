# wrk-result.sh — sourced by chaos.sh and cluster.sh (POSIX sh):
# wrk_result FILE sets $requests, $socket (connect + read + write + timeout
# errors) and $non2xx from the output of a wrk run.
wrk_result() {
    requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$1")
    socket=$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$1" |
        awk '{ print $1 + $2 + $3 + $4 }')
    socket=${socket:-0}
    non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: \([0-9]*\).*/\1/p' "$1")
    non2xx=${non2xx:-0}
}
