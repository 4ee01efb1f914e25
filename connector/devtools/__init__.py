"""Development tools: local Label Studio and S3 servers, the demo, sample data.

Never imported by production modules (a test checks it); the CLI's ``demo`` command
imports it only when run.
"""
