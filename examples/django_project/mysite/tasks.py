"""The example's tasks, kept in Django's own database."""

from conveyor import Conveyor
from conveyor.contrib.django import database_factory

app = Conveyor(backend_factory=database_factory("default"), lease=5.0, heartbeat_interval=0.5)


@app.task(name="shop.confirm_order")
def confirm_order(order_id: int) -> str:
    from shop.models import Order

    order = Order.objects.get(pk=order_id)
    order.confirmed = True
    order.save(update_fields=["confirmed"])
    return f"order {order_id} confirmed"
