"""The embedded local emulator (fake-gcs-server as a child process, its write-through front and
snapshots on disk) and the demo bucket: octuefs without a cloud account."""
