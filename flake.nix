{
  description = "inference-router: the data-plane entrypoint of a Kubernetes InferenceService";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      devShells = forAllSystems (pkgs: {
        # Node 24 and the tools the scripts use; `npm ci` still installs the
        # project's own pinned Node 24 into node_modules for npm start / npm test.
        default = pkgs.mkShell {
          packages = [ pkgs.nodejs_24 pkgs.curl pkgs.wrk ];
        };
      });
    };
}
