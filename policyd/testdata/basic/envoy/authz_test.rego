package envoy.authz_test

import data.envoy.authz

test_public_get if {
	authz.allow.allowed with input as {"attributes": {"request": {"http": {"method": "GET"}}}, "parsed_path": ["public", "x"], "parsed_query": {"lang": ["en"]}}
}

test_private_denied if {
	not authz.allow.allowed with input as {"attributes": {"request": {"http": {"method": "GET"}}}, "parsed_path": ["private"], "parsed_query": {}}
}
