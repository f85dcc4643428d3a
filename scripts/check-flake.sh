#!/usr/bin/env bash
# Checks flake.nix offline: it parses, and `nix flake check` evaluates every
# output against a stand-in nixpkgs whose packages are trivial derivations.
# That catches wrong attribute names, bad arguments and structural errors; it
# builds nothing, so npmDepsHash and the real image stay unverified.
# Needs nix (Debian: apt-get install nix-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
nix-instantiate --parse flake.nix > /dev/null
echo "flake.nix parses"

stub="$(mktemp -d)"
trap 'rm -rf "$stub"' EXIT
cat > "$stub/flake.nix" <<'NIX'
{
  outputs = { self }:
    let
      genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);
      lib = {
        inherit genAttrs;
        optionals = cond: list: if cond then list else [ ];
        optionalAttrs = cond: attrs: if cond then attrs else { };
      };
      drv = system: name: builtins.derivation { inherit name system; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
      pkgsFor = system:
        let d = drv system; in {
          inherit lib;
          stdenv = { isLinux = builtins.match ".*-linux" system != null; hostPlatform = { inherit system; }; };
          nodejs_24 = d "nodejs"; curl = d "curl"; wrk = d "wrk"; kubectl = d "kubectl";
          buildah = d "buildah"; podman = d "podman"; makeWrapper = d "make-wrapper";
          mkShell = { packages ? [ ], ... }: builtins.seq (builtins.length packages) (d "shell");
          buildNpmPackage = args:
            assert builtins.isString args.pname && builtins.isString args.version;
            assert builtins.isString args.npmDepsHash && builtins.isString args.installPhase;
            (d "${args.pname}-${args.version}") // { inherit (args) version; };
          dockerTools.buildLayeredImage = { name, tag, config, ... }:
            assert builtins.isList config.Entrypoint && builtins.isString config.User;
            d "${name}-${tag}-image";
        };
    in
    {
      inherit lib;
      legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ] pkgsFor;
    };
}
NIX
# git+file: only the tracked files (not node_modules) go to the store.
if ! output=$(nix --extra-experimental-features 'nix-command flakes' flake check --offline --no-write-lock-file \
  --no-build --override-input nixpkgs "path:$stub" "git+file://$PWD" 2>&1); then
  echo "$output"
  exit 1
fi
echo "flake outputs evaluate against the stand-in nixpkgs (nothing built; npmDepsHash unverified)"
