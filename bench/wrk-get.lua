-- wrk: GET the manifest by tag, asking for an OCI image manifest.
wrk.method = "GET"
wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json"
