package zfaas.egress

rules contains {"host": host, "port": 443} if {
	some host in data.zfaas.config.egress[input.function.name]
}
