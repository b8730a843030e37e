echo "check.sh: ok"
