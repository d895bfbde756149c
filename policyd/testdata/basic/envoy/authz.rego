# Test policy for Envoy ext_authz: GET /public/... is allowed with a header
# added and one removed; everything else is denied with 401 and a body.
package envoy.authz

default allow := {"allowed": false, "http_status": 401, "body": "denied by zfaas", "headers": {"x-zfaas-reason": "not public"}}

allow := {
	"allowed": true,
	"headers": {"x-zfaas-checked": "yes"},
	"request_headers_to_remove": ["x-internal"],
	"response_headers_to_add": {"x-zfaas-revision": "test"},
} if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
	input.parsed_query.lang == ["en"]
}

allow := true if {
	input.attributes.request.http.method == "POST"
	input.parsed_path == ["orders"]
	input.parsed_body.amount < 100
}
