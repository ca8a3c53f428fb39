/* warren: an AMQP 0-9-1 message broker. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "server/broker.h"
#include "server/config.h"
#include "server/log.h"

int main(int argc, char **argv)
{
    struct config cfg;
    config_defaults(&cfg);
    int rc = config_parse_args(&cfg, argc, argv);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    log_set_level(cfg.log_level);
    if (mkdir(cfg.data_dir, 0750) != 0 && errno != EEXIST) {
        log_error("cannot create data directory %s: %s", cfg.data_dir, strerror(errno));
        return 1;
    }
    struct broker b;
    if (broker_init(&b, &cfg) != 0) {
        broker_free(&b);
        return 1;
    }
    rc = broker_run(&b);
    broker_free(&b);
    return rc;
}
