module github.com/hyperdhcp/hyperdhcp/dhcpd

go 1.26.0

require github.com/hyperdhcp/hyperdhcp/apis v0.0.0

// Releases build each module on its own (GOWORK=off); until apis is tagged,
// this replace makes that build use the apis in this repository.
replace github.com/hyperdhcp/hyperdhcp/apis => ../apis
