package org.apache.storm.daemon.worker;

/**
 * A stand-in for Storm's worker main class: a real HotSpot JVM whose shutdown hook
 * takes a given time, so SIGTERM handling, the "SIGTERM handler" thread and exit
 * status 143 are the JVM's own. Arguments follow Storm 2: topology id, supervisor id,
 * supervisor port, port, worker id; the hook time in milliseconds comes from the
 * system property storm.test.hook.ms.
 */
public final class Worker {
    public static void main(String[] args) throws InterruptedException {
        long hookMillis = Long.getLong("storm.test.hook.ms", 300L);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                Thread.sleep(hookMillis);
            } catch (InterruptedException ignored) {
                Thread.currentThread().interrupt();
            }
        }, "worker-shutdown"));
        System.out.println("ready " + args[0]);
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }
}
