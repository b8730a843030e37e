console.log(`post: cleaning up after greeting ${process.env.STATE_greeted}`);
