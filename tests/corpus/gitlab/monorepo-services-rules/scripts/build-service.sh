set -e
cd "services/$1"
test -f VERSION
echo "built $1 $(cat VERSION)"
