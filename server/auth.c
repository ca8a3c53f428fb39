#include "server/auth.h"

#include <stdio.h>
#include <string.h>

#include "amqp/table.h"

static void copy_user(char *dst, size_t size, amqp_bytes name)
{
    size_t n = name.len < size - 1 ? name.len : size - 1;
    memcpy(dst, name.ptr, n);
    dst[n] = 0;
}

/* PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd. */
static int parse_plain(amqp_bytes r, amqp_bytes *user, amqp_bytes *pass)
{
    const uint8_t *nul1 = memchr(r.ptr, 0, r.len);
    if (!nul1)
        return -1;
    size_t rest = r.len - (size_t)(nul1 + 1 - r.ptr);
    const uint8_t *nul2 = memchr(nul1 + 1, 0, rest);
    if (!nul2)
        return -1;
    *user = amqp_bytes_of(nul1 + 1, (size_t)(nul2 - nul1 - 1));
    *pass = amqp_bytes_of(nul2 + 1, r.len - (size_t)(nul2 + 1 - r.ptr));
    return 0;
}

/* AMQPLAIN: a field table (without its length prefix) with LOGIN and PASSWORD strings. */
static int parse_amqplain(amqp_bytes r, amqp_bytes *user, amqp_bytes *pass)
{
    struct field_value login, password;
    if (table_validate(r) != 0 || table_get(r, "LOGIN", &login) != 1 || table_get(r, "PASSWORD", &password) != 1)
        return -1;
    if ((login.type != 'S' && login.type != 'x') || (password.type != 'S' && password.type != 'x'))
        return -1;
    *user = login.v.bytes;
    *pass = password.v.bytes;
    return 0;
}

int auth_check(const char *mech, amqp_bytes response, bool from_loopback, char *user, size_t user_size,
               const char **why)
{
    amqp_bytes name, pass;
    user[0] = 0;
    int rc;
    if (strcmp(mech, "PLAIN") == 0)
        rc = parse_plain(response, &name, &pass);
    else if (strcmp(mech, "AMQPLAIN") == 0)
        rc = parse_amqplain(response, &name, &pass);
    else
        return AUTH_UNKNOWN_MECHANISM;
    if (rc != 0) {
        *why = "malformed response";
        return AUTH_REFUSED;
    }
    copy_user(user, user_size, name);
    if (!amqp_bytes_eq_cstr(name, "guest") || !amqp_bytes_eq_cstr(pass, "guest")) {
        *why = "invalid credentials";
        return AUTH_REFUSED;
    }
    if (!from_loopback) {
        *why = "user 'guest' can only connect via localhost";
        return AUTH_REFUSED;
    }
    return AUTH_OK;
}
