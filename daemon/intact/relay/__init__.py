"""The relay: one app request through attempts, retries, resumes and failover."""
