"""The project's base: what every package uses and that knows nothing of the method, the launcher or
the evaluation. Typed-config machinery (schema), crash-safe files (atomicio), command-line hints
(commandline), file kinds from their first bytes (filekind), the code version (provenance) and
resumable downloads (download). Imports no other package of the project."""
