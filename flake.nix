{
  description = "inference-router: the data-plane entrypoint of a Kubernetes InferenceService";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # The same command as the Dockerfile's CMD (see BENCHMARKS.md for the flag).
      nodeFlags = [ "--max-semi-space-size=4" "--single-threaded-gc" ];
    in
    {
      packages = forAllSystems (pkgs:
        let
          nodejs = pkgs.nodejs_24;
          router = pkgs.buildNpmPackage {
            pname = "inference-router";
            version = "0.1.0";
            src = self;
            inherit nodejs;
            # NOT VERIFIED here (no nixpkgs could be fetched): replace with the
            # hash `nix build` reports on first use (prefetch-npm-deps package-lock.json).
            npmDepsHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
            # The `node` npm package (Node 24 for npm start on older machines)
            # would fetch a second Node; nixpkgs provides it.
            npmFlags = [ "--ignore-scripts" ];
            npmBuildScript = "build";
            nativeBuildInputs = [ pkgs.makeWrapper ];
            installPhase = ''
              runHook preInstall
              mkdir -p $out/lib/inference-router $out/bin
              cp -r dist/. $out/lib/inference-router/
              makeWrapper ${nodejs}/bin/node $out/bin/inference-router \
                --add-flags "${builtins.concatStringsSep " " nodeFlags} $out/lib/inference-router/router.js"
              makeWrapper ${nodejs}/bin/node $out/bin/inference-router-controller \
                --add-flags "--disable-warning=DEP0040 $out/lib/inference-router/controller.js"
              runHook postInstall
            '';
            meta.mainProgram = "inference-router";
          };
        in
        {
          default = router;
        } // pkgs.lib.optionalAttrs pkgs.stdenv.isLinux {
          # Same entrypoint and behaviour as the Dockerfile: non-root, port 8080,
          # nothing written to disk, Node handles SIGTERM as PID 1.
          image = pkgs.dockerTools.buildLayeredImage {
            name = "inference-router";
            tag = router.version;
            config = {
              Entrypoint = [ "${router}/bin/inference-router" ];
              User = "1000:1000";
              ExposedPorts = { "8080/tcp" = { }; };
              Env = [ "NODE_ENV=production" "PORT=8080" ];
              StopSignal = "SIGTERM";
            };
          };
        });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/inference-router";
        };
        controller = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/inference-router-controller";
        };
      });

      devShells = forAllSystems (pkgs: {
        # Node 24 and the tools the scripts use; `npm ci` still installs the
        # project's pinned Node 24 into node_modules for npm start / npm test.
        default = pkgs.mkShell {
          packages = [ pkgs.nodejs_24 pkgs.curl pkgs.wrk pkgs.kubectl ]
            # util-linux: taskset, with which the benchmark pins servers and wrk to cores.
            ++ pkgs.lib.optionals pkgs.stdenv.isLinux [ pkgs.buildah pkgs.podman pkgs.util-linux ];
        };
      });
    };
}
