-- wrk: HEAD the manifest by tag, asking for an OCI image manifest.
wrk.method = "HEAD"
wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json"
