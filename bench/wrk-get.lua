-- wrk: GET the manifest by tag, asking for an OCI image manifest.
-- With BENCH_AUTHORIZATION set (bench/auth), every request carries it as its
-- Authorization header (e.g. "Bearer <token>").
wrk.method = "GET"
wrk.headers["Accept"] = "application/vnd.oci.image.manifest.v1+json"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then
    wrk.headers["Authorization"] = authorization
end
