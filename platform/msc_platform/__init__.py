"""The MSC sweep platform. Areas, top-down: cli -> sweeps -> run (-> data_tools -> model);
reports beside sweeps, reading MLflow only; cluster for the local Ray cluster helper.
See docs/architecture.md."""
