. src/lib/greet.sh
greet build
