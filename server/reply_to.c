#include "server/reply_to.h"

#include <string.h>

#include "amqp_methods.h"
#include "server/broker.h"
#include "server/channel.h"
#include "server/connection.h"
#include "server/message.h"
#include "server/names.h"

static amqp_bytes reply_name(const struct channel *ch) { return amqp_bytes_of(ch->reply_name, ch->reply_name_len); }

void reply_to_consume(struct channel *ch, const struct amqp_basic_consume *bc)
{
    const uint32_t mid = AMQP_BASIC_CONSUME;
    if (!bc->no_ack) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "reply consumer cannot acknowledge");
        return;
    }
    if (ch->reply_name_len) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "reply consumer already set");
        return;
    }
    amqp_bytes tag = bc->consumer_tag;
    char generated[64];
    if (tag.len == 0)
        tag = amqp_bytes_of(generated, names_generate(generated, sizeof generated, "amq.ctag-"));
    memcpy(ch->reply_tag, tag.ptr, tag.len);
    ch->reply_tag_len = (uint8_t)tag.len;
    ch->reply_name_len = (uint8_t)names_generate(ch->reply_name, sizeof ch->reply_name, REPLY_TO_QUEUE ".");
    struct broker *b = ch->conn->b;
    xmap_put(&b->reply_channels, reply_name(ch), xhash(reply_name(ch)), ch);
    if (!bc->nowait) {
        struct amqp_method ok = { .id = AMQP_BASIC_CONSUME_OK };
        ok.a.basic_consume_ok.consumer_tag = tag;
        conn_send_method(ch->conn, ch->id, &ok);
    }
}

void reply_to_channel_gone(struct channel *ch)
{
    if (!ch->reply_name_len)
        return;
    xmap_del(&ch->conn->b->reply_channels, reply_name(ch), xhash(reply_name(ch)));
    ch->reply_name_len = 0;
    ch->reply_tag_len = 0;
}

bool reply_to_cancel(struct channel *ch, amqp_bytes tag)
{
    if (!ch->reply_name_len || !amqp_bytes_eq(tag, amqp_bytes_of(ch->reply_tag, ch->reply_tag_len)))
        return false;
    reply_to_channel_gone(ch);
    return true;
}

bool reply_to_rewrite(struct channel *ch, struct amqp_basic_properties *pr)
{
    if (!ch->reply_name_len) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH, "fast reply consumer does not exist");
        return false;
    }
    pr->reply_to = reply_name(ch);
    return true;
}

bool reply_to_is_live_name(struct broker *b, amqp_bytes name)
{
    return name.len > sizeof REPLY_TO_QUEUE && xmap_find(&b->reply_channels, name) != NULL;
}

bool reply_to_route(struct broker *b, amqp_bytes rkey, struct message *m, bool *delivered)
{
    size_t plen = sizeof REPLY_TO_QUEUE; /* with the '.' */
    *delivered = false;
    if (rkey.len <= plen || memcmp(rkey.ptr, REPLY_TO_QUEUE ".", plen) != 0)
        return false;
    struct channel *ch = xmap_find(&b->reply_channels, rkey);
    if (!ch || ch->state != CH_OPEN)
        return true; /* the requester is gone: dropped, as RabbitMQ does */
    struct amqp_method d = { .id = AMQP_BASIC_DELIVER };
    d.a.basic_deliver.consumer_tag = amqp_bytes_of(ch->reply_tag, ch->reply_tag_len);
    d.a.basic_deliver.delivery_tag = ++ch->next_tag;
    d.a.basic_deliver.exchange = message_exchange(m);
    d.a.basic_deliver.routing_key = rkey;
    conn_send_content(ch->conn, ch->id, &d, m);
    *delivered = true;
    return true;
}
