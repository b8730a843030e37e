echo "main: ok"
