/**
 * A self-signed certificate for 127.0.0.1 and localhost (EC P-256, valid 2000-01-01 to 2125-01-01, so a
 * test machine's clock cannot make it "not yet valid"), for tests of TLS to a seed. Generated once with
 * python3's `cryptography` package. The key protects nothing; it only lets a test server speak TLS.
 */
export const SEED_TEST_CERT = `-----BEGIN CERTIFICATE-----
MIIBaDCCAQ2gAwIBAgIUX8pFU3DWdedPm3HY/IoSw6y8clIwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPc2hvYWwtc2VlZC10ZXN0MCAXDTAwMDEwMTAwMDAwMFoYDzIx
MjUwMTAxMDAwMDAwWjAaMRgwFgYDVQQDDA9zaG9hbC1zZWVkLXRlc3QwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAASExcImoAMR/pMXf/T1qm4p+IT/DLgwFkfLJI7N
8fo90sokfb/ChE0stA/wQom91t4HXBbp0nll+c6KjqdVTwCboy8wLTAaBgNVHREE
EzARhwR/AAABgglsb2NhbGhvc3QwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNJADBGAiEAwq1gJfm6zfXnBi3yJHjWY6kCkVqMVYxMX4KDoeQ2IR4CIQDi8ELW
tpfZphvhfsRKiwu4MyTZoqXGlQFyx2U48t+lyA==
-----END CERTIFICATE-----
`;

export const SEED_TEST_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgHJm3gBhTRvNr7Mt4
xTD6t3xus0W5C/zDfAtgiEuVdCShRANCAASExcImoAMR/pMXf/T1qm4p+IT/DLgw
FkfLJI7N8fo90sokfb/ChE0stA/wQom91t4HXBbp0nll+c6KjqdVTwCb
-----END PRIVATE KEY-----
`;
